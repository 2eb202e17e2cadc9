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


def _key_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    key = Path(args.signing_key or os.environ.get("SWITCHYARD_SIGNING_KEY") or "keys/signing.key")
    trusted = Path(args.trusted_keys or os.environ.get("SWITCHYARD_TRUSTED_KEYS") or "keys/trusted")
    return key, trusted


def _new_key(key: Path, trusted: Path, prog: str) -> None:
    from artifact.signing import create_key

    identity = create_key(key, trusted)
    print(
        f"[{prog}] created a signing key pair: {key} (private, keep it secret) and {trusted}/{identity}.pub "
        "(trusted by the service and the controller)",
        file=sys.stderr,
    )


def _signer(args: argparse.Namespace, *, create: bool) -> Any:
    """The signing key. ``train`` makes a pair on first use (and says so); ``sign`` never does: a key
    that appears by itself would be trusted by everything downstream without anyone deciding it."""
    from artifact.signing import load_private

    key, trusted = _key_paths(args)
    if create and not key.exists() and not key.is_symlink():
        _new_key(key, trusted, "train")
    return load_private(key)


def cmd_keygen(args: argparse.Namespace) -> int:
    key, trusted = _key_paths(args)
    if key.exists() or key.is_symlink():
        raise ArtifactError(f"{key} exists already: refusing to replace a signing key (move it away first)")
    _new_key(key, trusted, "keygen")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """Sign the manifest bytes read here, once, after checking the model file against them."""
    import hashlib

    from artifact.manifest import MANIFEST_FILE, parse_manifest
    from artifact.safeio import MAX_MANIFEST_BYTES, UnsafeFile, read_capped, write_private
    from artifact.signing import SIGNATURE_FILE, key_id, signature_file
    from artifact.trust import model_path

    version_dir = Path(args.version_dir)
    private = _signer(args, create=False)
    try:
        data = read_capped(version_dir / MANIFEST_FILE, MAX_MANIFEST_BYTES)
        manifest = parse_manifest(data, version_dir / MANIFEST_FILE)
        path = model_path(version_dir, manifest)
        payload = read_capped(path, manifest.artifact.size)
    except (OSError, UnsafeFile) as exc:
        raise ArtifactError(f"cannot sign {version_dir}: {exc}") from None
    if hashlib.sha256(payload).hexdigest() != manifest.artifact.sha256:
        raise ArtifactError(f"{path} does not match its manifest's sha256: refusing to sign it")
    try:
        write_private(version_dir / SIGNATURE_FILE, signature_file(data, private), 0o644)
    except FileExistsError:
        raise ArtifactError(
            f"{version_dir} is signed already ({SIGNATURE_FILE} exists): remove it to sign again"
        ) from None
    print(f"[sign] {version_dir} signed by key {key_id(private.public_key())}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.train import train

    config = load_config(Path(args.config), data_override=Path(args.data) if args.data else None)
    log = Path(args.feedback) if args.feedback else None
    path, manifest = train(
        config,
        _models_dir(args.models_dir),
        _signer(args, create=True),
        feedback_log=log,
        feedback_hours=args.feedback_hours,
    )
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
        ("grouped by", a.metrics.get("grouped_by") or "-", b.metrics.get("grouped_by") or "-"),
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
    if a.metrics.get("grouped_by") != b.metrics.get("grouped_by"):
        print("note: one version was evaluated on groups it never saw and the other was not; not comparable")
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
    train.add_argument(
        "--feedback",
        metavar="LOG",
        help="also train on the labelled live predictions of this prediction log (a run dir's predictions.sqlite)",
    )
    train.add_argument("--feedback-hours", type=float, help="only feedback on predictions of the last H hours")
    keygen = sub.add_parser("keygen", help="create a signing key pair (refuses to replace one)")
    keygen.set_defaults(func=cmd_keygen)
    for command in (train, sign, keygen):
        command.add_argument(
            "--signing-key",
            help="private key (default: $SWITCHYARD_SIGNING_KEY or keys/signing.key; train makes one if absent)",
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
