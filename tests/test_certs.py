"""fl_app/launch/certs.py (scripts/make_certs.py): the files Flower reads, created
once, never clobbered. The script's exit codes are tested in ``test_scripts.py``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)

from fl_app.launch.certs import CertError, Certs, ensure, server_sans


def test_files_are_what_flower_loads(tmp_path: Path) -> None:
    written = ensure(tmp_path, num_supernodes=2)
    assert sorted(written) == sorted(p.name for p in tmp_path.iterdir())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "superlink.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    assert server_sans(tmp_path / "superlink.crt") == {"127.0.0.1", "localhost"}
    for i in range(2):
        private = load_ssh_private_key((tmp_path / f"supernode-{i}").read_bytes(), None)
        public = load_ssh_public_key((tmp_path / f"supernode-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.public_key().public_numbers() == public.public_numbers()
    for secret in ("ca.key", "superlink.key", "supernode-0", "supernode-1"):
        assert stat.S_IMODE((tmp_path / secret).stat().st_mode) == 0o600, secret
    Certs(tmp_path).check(2)  # the deployment finds every file it needs


def test_rerun_keeps_files_and_adds_only_new_nodes(tmp_path: Path) -> None:
    ensure(tmp_path, num_supernodes=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert ensure(tmp_path, num_supernodes=2) == ["supernode-1", "supernode-1.pub"]
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"supernode-1", "supernode-1.pub"}
    assert ensure(tmp_path, num_supernodes=2) == []


def test_missing_san_is_an_error_until_forced(tmp_path: Path) -> None:
    ensure(tmp_path, num_supernodes=3)
    old_ca = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(CertError, match=r"superlink\.example\.org"):
        ensure(tmp_path, 3, ["superlink.example.org"])
    assert (tmp_path / "ca.crt").read_bytes() == old_ca
    ensure(tmp_path, 3, ["superlink.example.org"], force=True)
    assert "superlink.example.org" in server_sans(tmp_path / "superlink.crt")
    assert (tmp_path / "ca.crt").read_bytes() != old_ca


def test_a_missing_file_is_named_with_the_command_that_makes_it(
    tmp_path: Path,
) -> None:
    ensure(tmp_path, num_supernodes=1)
    with pytest.raises(FileNotFoundError, match=r"supernode-1, supernode-1\.pub"):
        Certs(tmp_path).check(2)
