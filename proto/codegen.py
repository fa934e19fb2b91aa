"""Generate the Python code for proto/netagg/v1/*.proto, or check that the committed code is current.

    python proto/codegen.py          # regenerate (commit the result)
    python proto/codegen.py --check  # exit 1 if the committed files differ from what the .proto makes

The generated *_pb2.py, *_pb2.pyi and *_pb2_grpc.py live beside the .proto files and import as
``netagg.v1.control_pb2``; `make test` runs --check, so a .proto change without regenerated code fails.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent  # proto/
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    sources = sorted(ROOT.glob("netagg/v1/*.proto"))
    args = ["protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    if protoc.main([*args, *(str(s.relative_to(ROOT)) for s in sources)]) != 0:
        raise SystemExit("protoc failed")
    return [s.relative_to(ROOT).with_suffix("") for s in sources]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    args = p.parse_args(argv)
    if not args.check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = []
        for stem in generate(Path(tmp)):
            for suffix in GENERATED:
                name = Path(str(stem) + suffix)
                fresh, committed = Path(tmp) / name, ROOT / name
                if not committed.exists() or not filecmp.cmp(fresh, committed, shallow=False):
                    stale.append(str(Path("proto") / name))
    if stale:
        print(f"generated code is stale: {', '.join(stale)}; run: python proto/codegen.py", file=sys.stderr)
        return 1
    print("generated code is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
