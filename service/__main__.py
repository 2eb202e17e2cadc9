"""``python -m service --model models/industry/3 --port 8001``: serve one verified model version.

Every option can also be set as an environment variable: ``--max-batch-size`` is
``SWITCHYARD_MAX_BATCH_SIZE``; the command line wins.
"""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError

from artifact.options import first_error
from service.settings import ServiceSettings

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, field in ServiceSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        helptext = field.description or ""
        default = "" if field.is_required() else f" (default: {field.default})"
        env = f" [env SWITCHYARD_{name.upper()}]"
        if field.annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=helptext + default + env
            )
        else:
            parser.add_argument(flag, default=None, help=helptext + default + env, metavar=name.upper())
    return parser


def load_settings(argv: list[str] | None) -> ServiceSettings:
    args = vars(build_parser().parse_args(argv))
    given = {k: v for k, v in args.items() if v is not None}
    return ServiceSettings(**given)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        key, value, reason = first_error(exc)
        print(f"error: setting {key}={value!r}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    # Native thread pools are sized before numpy/scikit-learn are imported (workers x threads <= cores).
    threads = str(settings.native_threads())
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)

    from artifact.manifest import ArtifactError
    from artifact.signing import Trust
    from artifact.trust import check_runtime, read_verified
    from service.server import EXIT_ARTIFACT, serve

    if settings.allow_unsigned:
        print(
            "WARNING: --allow-unsigned: an unsigned artifact will be served; never do this in production",
            file=sys.stderr,
        )
    try:
        trust = Trust.from_folder(settings.trusted_keys, allow_unsigned=settings.allow_unsigned)
        verified = read_verified(settings.model, trust)  # signature, folder, then the model file, hashed once
        for warning in check_runtime(verified.manifest, allow_mismatch=settings.allow_version_mismatch):
            print(f"warning: {warning}", file=sys.stderr)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ARTIFACT
    try:
        return serve(settings, verified)
    except OSError as exc:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
