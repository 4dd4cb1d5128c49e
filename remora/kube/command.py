"""`remora inject -f FILE`: read manifests, write them injected to stdout, notes and errors to stderr."""
from __future__ import annotations

import sys


def add_inject_parser(sub, http_url) -> None:
    """The `inject` subcommand's flags (`http_url` is the CLI's URL checker)."""
    from remora.kube.sidecar import DEFAULT_CONTROL, DEFAULT_IMAGE
    inject = sub.add_parser("inject", help="add the sidecar to Kubernetes manifests (like istioctl kube-inject)")
    inject.add_argument("-f", "--filename", required=True, metavar="FILE",
                        help="YAML manifests (several documents, Lists), or - for stdin")
    inject.add_argument("--image", default=DEFAULT_IMAGE, help=f"sidecar image (default {DEFAULT_IMAGE})")
    inject.add_argument("--control", type=http_url, default=DEFAULT_CONTROL, metavar="URL",
                        help=f"control server URL as pods reach it (default {DEFAULT_CONTROL})")


def run_inject(args) -> int:
    # Here, not at import: cli.py builds every subcommand's parser, and inject.py loads
    # ruamel.yaml (2 MiB) that `remora proxy` must not pay for.
    from remora.kube.inject import InjectError, inject_text
    from remora.kube.sidecar import SidecarSettings
    try:
        if args.filename == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(args.filename, "rb") as file:
                raw = file.read()
        text = raw.decode("utf-8")
    except OSError as err:
        print(f"remora inject: cannot read {args.filename}: {err.strerror or err}", file=sys.stderr)
        return 1
    except UnicodeDecodeError as err:
        print(f"remora inject: {args.filename}: not UTF-8 text ({err.reason} at byte {err.start})",
              file=sys.stderr)
        return 1
    try:
        result = inject_text(text, SidecarSettings(image=args.image, control=args.control))
    except InjectError as err:
        print(f"remora inject: {args.filename}: {err}", file=sys.stderr)
        return 1
    for note in result.notes:
        print(f"remora inject: {note}", file=sys.stderr)
    # Bytes, not text: untouched documents leave exactly as they came (line endings too).
    sys.stdout.buffer.write(result.output.encode("utf-8"))
    sys.stdout.flush()
    return 0
