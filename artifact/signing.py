"""Signed manifests: who made an artifact, checked before a byte of it is unpickled.

The manifest carries the model file's sha256, so a signature over the manifest's exact bytes covers
the model too. The pipeline signs with an Ed25519 private key (``manifest.sig``: the key's id and the
signature); the service and the controller verify it against a folder of trusted public keys
(``*.pub``, PEM) before they trust anything the manifest says. An unsigned artifact, one signed by a
key that is not trusted, or one whose manifest changed after signing is refused, naming which.

Key files: the private key (PEM, mode 0600) stays with whoever trains; each public key is named
``<key id>.pub``, the key id being the first 16 hex digits of the sha256 of its raw bytes. Rotation:
create a new pair, add its public key to the trusted folders, train with the new private key, and
remove the old public key once no artifact signed by it is still to be served.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from artifact.manifest import ArtifactError
from artifact.safeio import MAX_KEY_BYTES, read_capped, write_private

SIGNATURE_FILE = "manifest.sig"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def create_key(private_path: Path, trusted_dir: Path) -> str:
    """A new key pair: the private key at ``private_path`` (0600), its public key in ``trusted_dir``."""
    private = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(private_path, pem, 0o600)
    return trust(private.public_key(), trusted_dir)


def trust(public: Ed25519PublicKey, trusted_dir: Path) -> str:
    """Add a public key to a trusted folder; its key id."""
    trusted_dir.mkdir(parents=True, exist_ok=True)
    identity = key_id(public)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = trusted_dir / f"{identity}.pub"
    try:
        write_private(path, pem, 0o644)
    except FileExistsError:
        if read_capped(path, MAX_KEY_BYTES) != pem:
            raise ArtifactError(f"{path} exists and holds another key: refusing to overwrite it") from None
    return identity


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(read_capped(path, MAX_KEY_BYTES), password=None)
    except FileNotFoundError:
        raise ArtifactError(
            f"no signing key at {path}: create one with `python -m pipeline keygen` (or train once, which does)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read the signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ArtifactError(f"{path} is not an Ed25519 private key")
    return key


def signature_file(manifest_bytes: bytes, private: Ed25519PrivateKey) -> bytes:
    """The contents of ``manifest.sig`` for these exact manifest bytes (the ones the signer built or
    read and checked, never the file read again)."""
    signature = private.sign(manifest_bytes)
    body = {
        "key": key_id(private.public_key()),
        "algorithm": "ed25519",
        "signature": base64.b64encode(signature).decode(),
    }
    return (json.dumps(body) + "\n").encode()


@dataclass(frozen=True)
class Trust:
    """The public keys an artifact may be signed by, or an explicit, loud opt-out."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    folder: Path | None = None
    allow_unsigned: bool = False

    @classmethod
    def from_folder(cls, folder: Path, *, allow_unsigned: bool = False) -> Trust:
        keys: dict[str, Ed25519PublicKey] = {}
        for path in sorted(folder.glob("*.pub")) if folder.is_dir() else []:
            try:
                key = serialization.load_pem_public_key(read_capped(path, MAX_KEY_BYTES))
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"{path} is not a PEM public key: {exc}") from None
            if isinstance(key, Ed25519PublicKey):
                keys[key_id(key)] = key
        return cls(keys, folder, allow_unsigned)

    def check(self, version_dir: Path, manifest_bytes: bytes, signature_file: bytes | None) -> str:
        """Who signed these manifest bytes (a key id) by this ``manifest.sig`` content, or why they
        are refused."""
        path = version_dir / SIGNATURE_FILE
        if signature_file is None:
            if self.allow_unsigned:
                return "unsigned (allowed by --allow-unsigned)"
            raise ArtifactError(
                f"{version_dir} is not signed (no {SIGNATURE_FILE}): refusing it; sign it with "
                f"`python -m pipeline sign {version_dir}`, or allow unsigned artifacts for a local experiment"
            )
        try:
            body = json.loads(signature_file)
            identity, signature = str(body["key"]), base64.b64decode(body["signature"])
        except (ValueError, KeyError, TypeError):
            raise ArtifactError(f"{path} is malformed: refusing the artifact") from None
        key = self.keys.get(identity)
        if key is None:
            where = self.folder or "the trusted keys"
            raise ArtifactError(f"{version_dir} is signed by key {identity}, which is not trusted in {where}")
        try:
            key.verify(signature, manifest_bytes)
        except InvalidSignature:
            raise ArtifactError(
                f"{version_dir}/manifest.json does not match its signature by key {identity}: "
                "it was changed after signing; refusing it"
            ) from None
        return identity
