"""Authenticity: sign an artifact folder with a private key and verify it where it runs, with OpenSSF's
model-signing (key-based, offline; `pip install 'canvit-runtime[signing]'`).

Checksums in manifest.json prove the files were not corrupted, not who wrote them: whoever can alter a file can
rewrite the manifest too. A signature over every file of the folder (manifest.json and the `.canvit-export` marker
included) made with the exporter's private key can be checked with the matching public key alone. The signature is
written into the folder as `artifact.sig` (a Sigstore bundle, which model-signing leaves out of what it hashes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from canvit_runtime.manifest import ManifestError
from canvit_runtime.paths import MARKER, bad_tree, printable

SIGNATURE = "artifact.sig"
INSTALL = "pip install 'canvit-runtime[signing]'"


def _configs():  # -> (model_signing.signing, model_signing.verifying, model_signing.hashing)
    try:
        from model_signing import hashing, signing, verifying
    except ImportError as error:
        raise ManifestError(f"signing needs OpenSSF model-signing ({error}): {INSTALL}") from error
    return signing, verifying, hashing


def _hashing(folder: Path):  # -> model_signing.hashing.Config
    _, _, hashing = _configs()
    return hashing.Config().set_ignored_paths(paths=[folder / SIGNATURE], ignore_git_paths=False)


def _check_tree(folder: Path) -> None:
    if not folder.is_dir() or folder.is_symlink():
        raise ManifestError(f"{printable(folder)}: not an artifact folder")
    if (odd := bad_tree(folder)) is not None:  # a FIFO or a device would hang the hashing
        raise ManifestError(f"{printable(odd)}: not a regular file or folder; artifacts hold only plain files")


def sign_artifact(folder: str | Path, private_key: str | Path, *, password: str | None = None) -> Path:
    """Write folder/artifact.sig, signing every file in `folder` with the elliptic-curve private key (PEM) at
    `private_key`; the `.canvit-export` marker is updated first to list the signature, so that `--force` can still
    replace the folder. Returns the signature's path. Raises ManifestError (a ValueError) for a folder holding a
    non-regular file, a missing model-signing, or a key it cannot use."""
    folder = Path(os.path.abspath(folder))  # model-signing matches ignored paths by their absolute form
    _check_tree(folder)
    signing, _, _ = _configs()
    marker = folder / MARKER
    if marker.is_file() and not marker.is_symlink():
        data = json.loads(marker.read_text())
        if isinstance(data, dict) and isinstance(data.get("paths"), list) and SIGNATURE not in data["paths"]:
            data["paths"] = sorted([*data["paths"], SIGNATURE])
            marker.write_text(json.dumps(data, indent=0) + "\n")
    signature = folder / SIGNATURE
    if signature.is_symlink():
        signature.unlink()
    try:
        signing.Config().use_elliptic_key_signer(private_key=Path(private_key), password=password) \
            .set_hashing_config(_hashing(folder)).sign(folder, signature)
    except (ValueError, OSError, TypeError) as error:
        raise ManifestError(f"cannot sign {printable(folder)} with {printable(private_key)} "
                            f"({printable(error, 120)}): pass an elliptic-curve private key in PEM") from error
    return signature


def verify_artifact(folder: str | Path, public_key: str | Path) -> None:
    """Raise ManifestError (one line) unless folder/artifact.sig is a valid signature, by the private key matching
    the PEM public key at `public_key`, of exactly the files now in `folder`."""
    folder = Path(os.path.abspath(folder))
    _check_tree(folder)
    _, verifying, _ = _configs()
    signature = folder / SIGNATURE
    if not signature.is_file() or signature.is_symlink():
        raise ManifestError(f"{printable(folder)}: no {SIGNATURE}; sign it with `canvit-runtime sign {printable(folder)} "
                            f"--private-key KEY.pem` where it was exported")
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key)) \
            .set_hashing_config(_hashing(folder)).verify(folder, signature)
    except Exception as error:  # model-signing raises ValueError and library errors alike for a bad signature
        first = str(error).strip().splitlines()
        raise ManifestError(f"{printable(folder)}: signature check failed with {printable(os.fspath(public_key))} "
                            f"({printable(first[0] if first else type(error).__name__, 160)}): the artifact was altered "
                            f"or signed by another key; copy it again from its source") from error
