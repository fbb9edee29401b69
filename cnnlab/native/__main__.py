"""python -m cnnlab.native build | status

build   compile the oneDNN convolution library (cnnlab/native/_onednn_conv.so); exit 1 with the reason if it
        cannot be built here (cnnlab then keeps lax convolutions).
status  say whether the library is built and usable in this process, and why not.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("build", "status"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if argv[0] == "build":
        from cnnlab.native import build

        try:
            path = build.build()
        except build.BuildError as error:
            print(f"cnnlab.native: not built: {error}", file=sys.stderr)
            return 1
        print(f"   built {path}")
        return 0
    from cnnlab.native import conv

    reason = conv.why_unavailable()
    print("oneDNN convolutions: " + ("available" if not reason else f"not available: {reason}"))
    return 0 if not reason else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
