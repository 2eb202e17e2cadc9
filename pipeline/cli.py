"""``python -m pipeline``: train, compare and make the sample data."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from artifact.manifest import ArtifactError, read_manifest
from artifact.registry import resolve
from pipeline.errors import PipelineError


def _models_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("SWITCHYARD_MODELS_DIR") or "models")


def _signer(args: argparse.Namespace) -> Any:
    """The signing key; on first use a new pair, whose public key the service and controller trust."""
    from artifact.signing import create_key, load_private

    key = Path(args.signing_key or os.environ.get("SWITCHYARD_SIGNING_KEY") or "keys/signing.key")
    if not key.exists():
        trusted = Path(args.trusted_keys or os.environ.get("SWITCHYARD_TRUSTED_KEYS") or "keys/trusted")
        identity = create_key(key, trusted)
        print(
            f"[train] created a signing key pair: {key} (private, keep it secret) and {trusted}/{identity}.pub "
            "(trusted by the service and the controller)",
            file=sys.stderr,
        )
    return load_private(key)


def cmd_sign(args: argparse.Namespace) -> int:
    from artifact.signing import sign
    from artifact.trust import model_path, sha256_file

    version_dir = Path(args.version_dir)
    manifest = read_manifest(version_dir)
    path = model_path(version_dir, manifest)
    if sha256_file(path) != manifest.artifact.sha256:
        raise ArtifactError(f"{path} does not match its manifest's sha256: refusing to sign it")
    print(f"[sign] {version_dir} signed by key {sign(version_dir, _signer(args))}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.train import train

    config = load_config(Path(args.config), data_override=Path(args.data) if args.data else None)
    path, manifest = train(config, _models_dir(args.models_dir), _signer(args))
    holdout = manifest.metrics["holdout"]
    cv = manifest.metrics.get("cv")
    cv_text = f", cv {cv['accuracy']}/{cv['macro_f1']}" if cv else ""
    print(
        f"[train] done: {manifest.name} v{manifest.version} ({manifest.model['kind']}): "
        f"held-out accuracy {holdout['accuracy']}, macro-F1 {holdout['macro_f1']}{cv_text} "
        f"in {manifest.training_seconds:.1f}s",
        file=sys.stderr,
    )
    print(path)
    return 0


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def cmd_compare(args: argparse.Namespace) -> int:
    models_dir = _models_dir(args.models_dir)
    a = read_manifest(resolve(models_dir, args.name, args.a))
    b = read_manifest(resolve(models_dir, args.name, args.b))
    rows: list[tuple[str, object, object]] = [
        ("kind", a.model["kind"], b.model["kind"]),
        ("created_at", a.created_at, b.created_at),
        ("dataset sha256", a.dataset.sha256[:12], b.dataset.sha256[:12]),
    ]
    for key in ("accuracy", "macro_f1"):
        rows.append((f"holdout {key}", a.metrics["holdout"][key], b.metrics["holdout"][key]))
    for key in ("accuracy", "macro_f1"):
        cva, cvb = a.metrics.get("cv") or {}, b.metrics.get("cv") or {}
        rows.append((f"cv {key}", cva.get(key, "-"), cvb.get(key, "-")))
    for name in sorted(set(a.metrics["eval_sets"]) | set(b.metrics["eval_sets"])):
        for key in ("accuracy", "macro_f1"):
            rows.append(
                (
                    f"{name} {key}",
                    a.metrics["eval_sets"].get(name, {}).get(key, "-"),
                    b.metrics["eval_sets"].get(name, {}).get(key, "-"),
                )
            )
    width = max(len(r[0]) for r in rows)
    col = max(12, *(len(_fmt(v)) for r in rows for v in r[1:]))
    print(f"{'':{width}}  {'v' + str(a.version):>{col}}  {'v' + str(b.version):>{col}}  delta")
    for label, va, vb in rows:
        delta = f"{vb - va:+.4f}" if isinstance(va, float) and isinstance(vb, float) else ""
        print(f"{label:{width}}  {_fmt(va):>{col}}  {_fmt(vb):>{col}}  {delta}")
    if a.dataset.sha256 != b.dataset.sha256:
        print("note: the two versions were trained on different data; held-out figures are not comparable")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from pipeline.sample import write_all

    folder = Path(args.out)
    write_all(folder)
    print(folder)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train, evaluate, sign and register a new model version")
    sign = sub.add_parser("sign", help="sign an existing version (e.g. one trained before signing existed)")
    sign.add_argument("version_dir", help="models/<name>/<version>")
    sign.set_defaults(func=cmd_sign)
    train.add_argument("--config", required=True, help="a training config, e.g. pipeline/configs/industry.toml")
    train.add_argument("--models-dir", help="registry root (default: $SWITCHYARD_MODELS_DIR or models/)")
    train.add_argument("--data", help="use this CSV instead of the config's data.path")
    for command in (train, sign):
        command.add_argument(
            "--signing-key", help="private key (default: $SWITCHYARD_SIGNING_KEY or keys/signing.key; made if absent)"
        )
        command.add_argument(
            "--trusted-keys",
            help="where a new key's public half goes (default: $SWITCHYARD_TRUSTED_KEYS or keys/trusted)",
        )
    train.set_defaults(func=cmd_train)

    compare = sub.add_parser("compare", help="print two versions' metrics side by side")
    compare.add_argument("name", help="model name, e.g. industry")
    compare.add_argument("a", help="a version (or 'latest')")
    compare.add_argument("b", help="another version (or 'latest')")
    compare.add_argument("--models-dir", help="registry root (default: $SWITCHYARD_MODELS_DIR or models/)")
    compare.set_defaults(func=cmd_compare)

    sample = sub.add_parser("sample", help="(re)generate the project's own sample data")
    sample.add_argument("--out", default="data/sample", help="folder to write to (default: data/sample)")
    sample.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (PipelineError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
