"""scripts/make_certs.py: the files Flower reads, created once, never clobbered."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_certs.py"


@pytest.fixture(scope="module")
def make_certs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_certs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_files_are_what_flower_loads(make_certs: ModuleType, tmp_path: Path) -> None:
    assert make_certs.main(["--out-dir", str(tmp_path), "--num-supernodes", "2"]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "superlink.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    assert make_certs.server_sans(tmp_path / "superlink.crt") == {
        "127.0.0.1",
        "localhost",
    }
    for i in range(2):
        private = load_ssh_private_key((tmp_path / f"supernode-{i}").read_bytes(), None)
        public = load_ssh_public_key((tmp_path / f"supernode-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.public_key().public_numbers() == public.public_numbers()
    for secret in ("ca.key", "superlink.key", "supernode-0", "supernode-1"):
        assert stat.S_IMODE((tmp_path / secret).stat().st_mode) == 0o600, secret


def test_rerun_keeps_files_and_adds_only_new_nodes(
    make_certs: ModuleType, tmp_path: Path
) -> None:
    make_certs.main(["--out-dir", str(tmp_path), "--num-supernodes", "1"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    make_certs.main(["--out-dir", str(tmp_path), "--num-supernodes", "2"])
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"supernode-1", "supernode-1.pub"}


def test_missing_san_is_an_error_until_forced(
    make_certs: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_certs.main(["--out-dir", str(tmp_path)])
    old_ca = (tmp_path / "ca.crt").read_bytes()
    args = ["--out-dir", str(tmp_path), "--san", "superlink.example.org"]
    assert make_certs.main(args) == 1
    assert "superlink.example.org" in capsys.readouterr().err
    assert (tmp_path / "ca.crt").read_bytes() == old_ca
    assert make_certs.main([*args, "--force"]) == 0
    assert "superlink.example.org" in make_certs.server_sans(tmp_path / "superlink.crt")
    assert (tmp_path / "ca.crt").read_bytes() != old_ca
