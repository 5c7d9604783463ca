"""Where weights come from: a ``--weights`` string turned into a local file, downloading it once.

Sources, checked in this order: ``http(s)://`` and ``file://`` URLs (cached in torch's hub
directory), ``hf-hub:org/name[/file]``, an existing local file, ``timm/name.tag`` hub tags,
``DEFAULT``, torchvision enum names (``ResNet50_Weights.IMAGENET1K_V2`` or ``IMAGENET1K_V2``) and
timm pretrained tags (``a1_in1k``). Cached copies are used first; ``HF_HUB_OFFLINE=1`` forbids any
download from the internet, and without a network the error says how to get the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from regraft.errors import WeightsError
from regraft.zoo import ModelRef

__all__ = ["Located", "locate", "is_none", "is_pretrained", "sha256_of", "hf_cache_dir", "torch_hub_checkpoints"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 3.0  # a probe before any download: no network must fail in seconds, not minutes
_READ_TIMEOUT_S = 30.0
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "")
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_ENUM_MEMBER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_ENUM_QUALIFIED = re.compile(r"^\w+_Weights\.[A-Z][A-Z0-9_]*$")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")
_FORMS = "none, DEFAULT, a torchvision enum name, timm/NAME.TAG, hf-hub:ORG/NAME, a .pth/.pt/.bin/.ckpt/.safetensors file or a URL"


@dataclass(frozen=True)
class Located:
    """A weights source resolved to a local file."""

    path: Path
    description: str  # what the source turned out to be, for the report
    verified: bool = False  # True when a sha256 was already checked on this file


def is_none(source: str | None) -> bool:
    """True for the sources meaning "no weights" (None, ``none``, ``random``, ``scratch``, empty)."""
    return source is None or str(source).strip().lower() in ("none", "", "random", "scratch")


def is_pretrained(source: str | None) -> bool:
    """Whether a weights spec names weights to load (the opposite of :func:`is_none`)."""
    return not is_none(source)


def locate(source: str, *, arch: ModelRef | None, sha256: str | None = None) -> Located:
    """Resolve a weights string to a local file, downloading into the normal caches when needed.

    Args:
        source: a ``--weights`` value other than ``none``.
        arch: the model's architecture, needed for ``DEFAULT`` and enum names.
        sha256: the expected hash of a downloaded file.

    Returns:
        The file and a description of where it came from.

    Raises:
        WeightsError: the source is not understood, does not exist, or cannot be fetched.
    """
    text = source.strip()
    if re.match(r"^(https?|file)://", text, re.IGNORECASE):
        return Located(download_url(text, sha256=sha256), f"URL {text}", verified=sha256 is not None)
    if text.startswith("hf-hub:"):
        repo, filename, revision = _parse_hub(text[len("hf-hub:") :])
        return Located(hub_file(repo, filename=filename, revision=revision), f"Hugging Face hub {repo}")
    local = Path(text).expanduser()
    if local.is_file():
        return Located(local, f"file {local}")
    if local.is_dir():
        return Located(_file_in_dir(local), f"folder {local}")
    if text.startswith("timm/") and "/" not in text[len("timm/") :]:
        return Located(hub_file(text), f"Hugging Face hub {text}")
    if text.upper() == "DEFAULT" or _ENUM_QUALIFIED.match(text) or _ENUM_MEMBER.match(text):
        return _named_weights(text, arch)
    if arch is not None and arch.zoo == "timm" and _timm_tag_exists(arch, text):
        return _timm_weights(arch, tag=text.rsplit(".", 1)[-1])
    if "/" in text or "\\" in text or local.suffix:
        raise WeightsError(f"weights file not found: {local}; check the path given to --weights")
    raise WeightsError(f"--weights '{source}' is not a file, URL, hub tag or weights name; expected {_FORMS}")


def _file_in_dir(folder: Path) -> Path:
    for name in (*_HUB_FILES, "model.pth", "model.pt", "checkpoint.pth", "pytorch_model.pt"):
        if (folder / name).is_file():
            return folder / name
    raise WeightsError(f"--weights {folder} is a folder without model.safetensors or pytorch_model.bin; pass the weights file itself")


# ---------------------------------------------------------------------------- named weights


def _named_weights(text: str, arch: ModelRef | None) -> Located:
    if _ENUM_QUALIFIED.match(text):
        return _torchvision_weights(text, arch)
    if arch is None:
        raise WeightsError(
            f"--weights {text} needs the architecture: build the model with regraft.zoo.build or pass arch='resnet50'"
        )
    if arch.zoo == "torchvision":
        return _torchvision_weights(text, arch)
    if text.upper() == "DEFAULT":
        return _timm_weights(arch, tag=None)
    raise WeightsError(
        f"--weights {text} is a torchvision weights name but {arch} is a timm model; use DEFAULT, a tag such as timm/{arch.arch}.TAG, or a file"
    )


def _torchvision_weights(text: str, arch: ModelRef | None) -> Located:
    import torchvision

    if _ENUM_QUALIFIED.match(text):
        try:
            member = torchvision.models.get_weight(text)
        except (ValueError, KeyError, AttributeError) as exc:
            raise WeightsError(f"--weights {text}: torchvision has no such weights enum member; see torchvision.models.get_model_weights(NAME)") from exc
    elif arch is None:
        raise WeightsError(f"--weights {text} needs the architecture: build the model with regraft.zoo.build or pass arch='resnet50'")
    else:
        try:
            enum = torchvision.models.get_model_weights(arch.name)
        except (ValueError, KeyError) as exc:
            raise WeightsError(f"torchvision has no pretrained weights for {arch.name}; pass --weights none or a file") from exc
        key = "DEFAULT" if text.upper() == "DEFAULT" else text
        if key not in enum.__members__:
            raise WeightsError(f"--weights {text}: {enum.__name__} has no member {text}; choose one of {', '.join(enum.__members__)}")
        member = enum[key]
    url = member.url
    name = Path(urllib.parse.urlparse(url).path).name
    match = _HASH_IN_NAME.search(name)
    path = download_url(url, hash_prefix=match.group(1) if match else None)
    return Located(path, f"torchvision {type(member).__name__}.{member.name} ({url})")


def _timm_tag_exists(arch: ModelRef, text: str) -> bool:
    import timm

    tag = text.rsplit(".", 1)[-1] if text.startswith(arch.arch + ".") else text
    if not re.match(r"^[\w-]+$", tag):
        return False
    try:
        return timm.models.get_pretrained_cfg(f"{arch.arch}.{tag}") is not None
    except RuntimeError:
        return False


def _timm_weights(arch: ModelRef, *, tag: str | None) -> Located:
    import timm

    name = f"{arch.arch}.{tag}" if tag else arch.name
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None:
        raise WeightsError(f"timm has no pretrained weights for {name}; pass --weights none or a file")
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        path = hub_file(repo, filename=cfg.hf_hub_filename, revision=revision or None)
        return Located(path, f"timm {name} (Hugging Face hub {cfg.hf_hub_id})")
    if cfg.url:
        return Located(download_url(cfg.url), f"timm {name} ({cfg.url})")
    if cfg.file:
        return Located(Path(cfg.file), f"timm {name} ({cfg.file})")
    raise WeightsError(f"timm's pretrained config for {name} names no file or URL; pass --weights PATH")


# ---------------------------------------------------------------------------- Hugging Face hub


def _parse_hub(spec: str) -> tuple[str, str | None, str | None]:
    spec, _, revision = spec.partition("@")
    parts = [p for p in spec.split("/") if p]
    if len(parts) < 2:
        raise WeightsError(f"--weights hf-hub:{spec}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME/FILE")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_file(repo: str, *, filename: str | None = None, revision: str | None = None) -> Path:
    """A file of a hub repo from the cache, or downloaded when online (safetensors preferred)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    cache = hf_cache_dir()
    names = (filename,) if filename else _HUB_FILES
    for name in names:
        try:
            return Path(hf_hub_download(repo, name, revision=revision, cache_dir=cache, local_files_only=True))
        except (LocalEntryNotFoundError, EntryNotFoundError, OSError, ValueError):
            continue  # ValueError: the hub client rejects the repo name; the download below says so
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    fix = f"download it on a connected machine with `hf download {repo} {names[0]} --local-dir DIR`, then pass --weights DIR/{names[0]}"
    reason = _no_network_reason(endpoint)
    if reason:
        raise WeightsError(f"no cached copy of {repo} ({names[0]}) in {cache} and {reason}: {fix}")
    for name in names:
        try:
            return Path(hf_hub_download(repo, name, revision=revision, cache_dir=cache))
        except LocalEntryNotFoundError as exc:
            raise WeightsError(f"could not download {repo} ({name}) from the hub: {fix}") from exc
        except EntryNotFoundError:
            continue
        except Exception as exc:  # noqa: BLE001 - the hub client raises many HTTP error types
            raise WeightsError(f"could not download {repo} from the hub ({type(exc).__name__}); check the name, or {fix}") from exc
    raise WeightsError(f"hub repo {repo} has none of {', '.join(names)}; pass hf-hub:{repo}/FILE naming its weights file")


# ---------------------------------------------------------------------------- URLs


def torch_hub_checkpoints() -> Path:
    """torch's download cache for weights (``$TORCH_HOME/hub/checkpoints``), read at call time."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


_CONTENT_NAMED = re.compile(r"-[0-9a-f]{8,}\.[^.]+$")


def url_cache_path(url: str, name: str) -> Path:
    """Where ``url`` is cached: ``checkpoints/NAME`` when the name carries its content's hash
    (``resnet50-11ad3fa6.pth``, torch's convention, so torchvision finds the same file), else
    ``checkpoints/url-<hash of the URL>/NAME`` so that two URLs ending in ``model.pth`` never
    share a cached file.
    """
    if _CONTENT_NAMED.search(name):
        return torch_hub_checkpoints() / name
    return torch_hub_checkpoints() / f"url-{hashlib.sha256(url.encode()).hexdigest()[:16]}" / name


def download_url(url: str, *, sha256: str | None = None, hash_prefix: str | None = None) -> Path:
    """Download ``url`` into torch's hub checkpoint cache once; later calls reuse the file.

    Raises:
        WeightsError: no cached copy and no network, the download failed, or the hash differs.
    """
    parsed = urllib.parse.urlparse(url)
    name = Path(urllib.parse.unquote(parsed.path)).name or "weights-" + hashlib.sha256(url.encode()).hexdigest()[:12]
    dest = url_cache_path(url, name)
    if dest.is_file():
        if sha256:
            _check_hash(dest, sha256, what=f"cached copy {dest} of {url}", fix=f"delete {dest} to download it again")
        log.info("using cached %s for %s", dest, url)
        return dest
    fix = f"download it on a connected machine with `curl -L -o {name} {url}`, copy it to {dest.parent}/ or pass --weights PATH"
    if parsed.scheme.lower() in ("http", "https") and (parsed.hostname or "") not in _LOOPBACK:
        reason = _no_network_reason(url)
        if reason:
            raise WeightsError(f"no cached copy of {url} in {dest.parent} and {reason}: {fix}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    try:
        digest = _stream(url, part)
        if sha256 and digest != sha256.lower():
            raise WeightsError(f"{url}: sha256 is {digest}, expected {sha256.lower()}; the file is not the one expected, check the URL or the --sha256 value")
        if hash_prefix and not digest.startswith(hash_prefix):
            raise WeightsError(f"{url}: sha256 {digest[:12]}... does not start with {hash_prefix} as its name promises; the download is corrupt, try again")
        os.replace(part, dest)
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsError(f"could not download {url} ({getattr(exc, 'reason', exc)}): {fix}") from exc
    finally:
        part.unlink(missing_ok=True)
    log.info("downloaded %s to %s", url, dest)
    return dest


def _stream(url: str, dest: Path) -> str:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=_READ_TIMEOUT_S) as response, dest.open("wb") as f:  # noqa: S310 - user-given URL
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hash(path: Path, expected: str, *, what: str, fix: str) -> None:
    actual = sha256_of(path)
    if actual != expected.lower():
        raise WeightsError(f"{what}: sha256 is {actual}, expected {expected.lower()}; {fix}")


def _no_network_reason(url: str) -> str | None:
    """Why ``url`` cannot be reached (offline mode, no route), or None when a connection opens."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return None  # the proxy decides; a direct probe would say nothing
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=_CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"no network ({parsed.hostname}: {exc.strerror or exc})"
