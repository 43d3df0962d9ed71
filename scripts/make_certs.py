"""Create the TLS certificates and SuperNode keys of a Flower deployment.

    python scripts/make_certs.py --num-supernodes 3 --san superlink.example.org

writes ``ca.crt``/``ca.key``, ``superlink.crt``/``superlink.key`` and
``supernode-<i>``/``supernode-<i>.pub`` into ``.secrets/`` (git-ignored) at the
repository root; which file goes where, and why, is in ``fl_app/launch/certs.py``.
Existing files are kept; exit code 1 if they contradict the request (``--force``
regenerates everything).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fl_app.launch.certs import CertError, ensure

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO / ".secrets",
        help="where the files go (default: .secrets/ at the repository root)",
    )
    parser.add_argument("--num-supernodes", type=int, default=3)
    parser.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="HOST",
        help="extra host name or IP of the SuperLink (repeat the option for more)",
    )
    parser.add_argument("--days", type=int, default=365, help="certificate lifetime")
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite everything: new CA, certificate and node keys",
    )
    args = parser.parse_args(argv)
    if args.num_supernodes < 0:
        parser.error("--num-supernodes must be >= 0")
    try:
        written = ensure(
            args.out_dir, args.num_supernodes, args.san, args.days, args.force
        )
    except CertError as error:
        print(f"make_certs: {error}", file=sys.stderr)
        return 1
    out = args.out_dir.resolve()
    if written:
        print(f"wrote to {out}: {', '.join(written)}")
    else:
        print(f"nothing to do: everything already in {out} (--force to regenerate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
