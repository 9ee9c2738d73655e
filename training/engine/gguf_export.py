"""A run exported for llama.cpp and Ollama, in a worker's child (`python -m training.engine gguf SPEC`): the merged
model as a 16-bit GGUF and its quantizations, the adapter as a GGUF LoRA with the base model's 16-bit GGUF to apply
it to, and a Modelfile for each (training/engine/ollama.py), each file with its size and sha256.

Every conversion is llama.cpp's own code: its convert_hf_to_gguf.py and convert_lora_to_gguf.py (with their
`conversion` package and gguf-py, taken from PyPI's llama-cpp-python sdist at install: scripts/family_assets.py), run
as child processes of this one (they inherit its allow-list environment), and llama_model_quantize from
llama-cpp-python for the quantizations. Nothing is fetched: a model that is not on this machine is refused.

Events (JSON lines): export-stage {stage, done, total, message}, export-file {name, size, sha256, kind}, then finished {files,
seconds} or failed {error_class, message}.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .events import EventSink

# The quantizations offered, by llama.cpp's own names (llama_ftype in llama.h), smallest loss first.
QUANTIZATIONS = {"q8_0": "Q8_0", "q6_k": "Q6_K", "q5_k_m": "Q5_K_M", "q4_k_m": "Q4_K_M", "q4_0": "Q4_0"}
DEFAULT_QUANTIZATIONS = ("q8_0", "q4_k_m")
CONVERTERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
TAIL = 1500  # characters of a converter's output kept in an error


class SpecError(ValueError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class ExportSpec:
    model: str  # the base model's folder
    adapter: str  # the run's adapter folder (its tokenizer saved beside it)
    out_dir: str
    llama_cpp_dir: str  # where the converters are (convert_hf_to_gguf.py, conversion/, gguf-py/)
    name: str  # the files' prefix, e.g. run-12
    merged: str | None = None  # the run's merged 16-bit model, if it saved one
    quantizations: tuple[str, ...] = DEFAULT_QUANTIZATIONS
    merged_gguf: bool = True
    lora_gguf: bool = True
    system: str | None = None
    threads: int = 0


def check_quantizations(values: Any) -> tuple[str, ...]:
    """The quantizations asked for, checked: a list of QUANTIZATIONS' names, each once (SpecError otherwise)."""
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise SpecError({"quantizations": f"a list of names; allowed: {', '.join(QUANTIZATIONS)}"})
    unknown = [v for v in values if v.lower() not in QUANTIZATIONS]
    if unknown:
        raise SpecError({"quantizations": f"{unknown[0]!r} is not offered; allowed: {', '.join(QUANTIZATIONS)}"})
    return tuple(dict.fromkeys(v.lower() for v in values))


def parse_spec(raw: dict[str, Any]) -> ExportSpec:
    if not isinstance(raw, dict):
        raise SpecError({"spec": "a JSON object"})
    missing = [k for k in ("model", "adapter", "out_dir", "llama_cpp_dir", "name") if not raw.get(k)]
    if missing:
        raise SpecError({k: "required" for k in missing})
    known = set(ExportSpec.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError({k: "not a field of an export" for k in unknown})
    values = dict(raw)
    values["quantizations"] = check_quantizations(raw.get("quantizations", list(DEFAULT_QUANTIZATIONS)))
    if not values.get("merged_gguf", True) and not values.get("lora_gguf", True):
        raise SpecError({"merged_gguf": "an export makes the merged GGUF, the LoRA GGUF or both"})
    return ExportSpec(**values)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class _Export:
    spec: ExportSpec
    sink: EventSink
    total: int
    done: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.spec.out_dir)

    def step(self, stage: str, message: str) -> None:
        self.sink.emit("export-stage", stage=stage, done=self.done, total=self.total, message=message)
        self.done += 1

    def add(self, path: Path, kind: str) -> None:
        entry = {"name": path.name, "size": path.stat().st_size, "sha256": sha256_of(path), "kind": kind}
        self.files.append(entry)
        self.sink.emit("export-file", **entry)

    def convert(self, script: str, args: list[str]) -> None:
        """One of llama.cpp's converters, in a child of this process (it puts its own gguf-py first on its path)."""
        path = Path(self.spec.llama_cpp_dir) / script
        result = subprocess.run([sys.executable, str(path), *args], cwd=path.parent, capture_output=True, text=True)
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise ConversionFailed(f"llama.cpp's {script} failed (exit code {result.returncode}): "
                                   f"{output[-TAIL:]}")


class ConversionFailed(RuntimeError):
    pass


def _merge(spec: ExportSpec, folder: Path) -> Path:
    """The run's adapter merged into its base, saved as a Hugging Face folder for the converter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(spec.model, dtype="auto")
    if base.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        base = base.to(torch.float16)
    merged = PeftModel.from_pretrained(base, spec.adapter).merge_and_unload()
    merged.save_pretrained(folder)
    AutoTokenizer.from_pretrained(spec.adapter).save_pretrained(folder)
    return folder


def _quantize(source: Path, target: Path, kind: str, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{QUANTIZATIONS[kind]}")
    params.nthread = threads
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if code != 0:
        raise ConversionFailed(f"llama.cpp's llama_model_quantize to {QUANTIZATIONS[kind]} returned {code}")


def export(spec: ExportSpec, sink: EventSink) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer

    from . import modelfile_check, ollama

    for script in CONVERTERS:
        if not (Path(spec.llama_cpp_dir) / script).is_file():
            raise ConversionFailed(f"llama.cpp's {script} is not in {spec.llama_cpp_dir}: `make install` puts it "
                                   "there (scripts/family_assets.py)")
    if not Path(spec.model).is_dir():
        raise ConversionFailed(f"the base model {spec.model} is not a folder on this worker: the export converts local "
                               "files only and fetches nothing; put the model in a model root and train from there")
    total = (2 + len(spec.quantizations)) * spec.merged_gguf + 2 * spec.lora_gguf + 1
    job = _Export(spec=spec, sink=sink, total=total)
    out, work = job.out, job.out / "work"
    out.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.adapter)
        try:
            template = ollama.derive_template(tokenizer) if tokenizer.chat_template else None
        except ollama.TemplateUnsupported:
            template = None  # Ollama reads the chat template from the GGUF's metadata instead
        name = spec.name
        if spec.merged_gguf:
            merged = Path(spec.merged) if spec.merged else None
            job.step("merge", "using the run's merged 16-bit model" if merged else "merging the adapter into its base")
            if merged is None:
                merged = _merge(spec, work / "merged")
            f16 = out / f"{name}-f16.gguf"
            job.step("convert", f"converting the merged model to {f16.name} (llama.cpp's convert_hf_to_gguf.py)")
            job.convert("convert_hf_to_gguf.py", [str(merged), "--outtype", "f16", "--outfile", str(f16)])
            job.add(f16, "merged")
            quantized = []
            for kind in spec.quantizations:
                target = out / f"{name}-{QUANTIZATIONS[kind]}.gguf"
                job.step("quantize", f"quantizing to {QUANTIZATIONS[kind]} (llama.cpp's llama_model_quantize)")
                _quantize(f16, target, kind, spec.threads)
                job.add(target, "quantized")
                quantized.append(target)
        if spec.lora_gguf:
            base = out / f"{name}-base-f16.gguf"
            job.step("convert", f"converting the base model to {base.name} (for the adapter)")
            job.convert("convert_hf_to_gguf.py", [spec.model, "--outtype", "f16", "--outfile", str(base)])
            job.add(base, "base")
            lora = out / f"{name}-lora-f16.gguf"
            job.step("convert", f"converting the adapter to {lora.name} (llama.cpp's convert_lora_to_gguf.py)")
            job.convert("convert_lora_to_gguf.py", [spec.adapter, "--base", spec.model, "--outtype", "f16",
                                                    "--outfile", str(lora)])
            job.add(lora, "lora")
        job.step("modelfile", "writing the Ollama Modelfiles")
        files = []
        if spec.merged_gguf:
            files.append((out / "Modelfile", ollama.modelfile(
                source=f"./{f16.name}", template=template, system=spec.system,
                alternatives=[f"./{q.name}" for q in quantized])))
        if spec.lora_gguf:
            files.append((out / "Modelfile.adapter", ollama.modelfile(
                source=f"./{base.name}", adapter=f"./{lora.name}", template=template, system=spec.system)))
        for path, text in files:
            modelfile_check.check(text)  # never hand out a Modelfile Ollama would refuse
            path.write_text(text, encoding="utf-8")
            job.add(path, "modelfile")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return job.files


def run(raw: dict[str, Any], sink: EventSink) -> int:
    started = time.monotonic()
    try:
        spec = parse_spec(raw)
        files = export(spec, sink)
    except Exception as exc:  # noqa: BLE001 - every outcome is an event
        message = str(exc) or type(exc).__name__
        sink.emit("failed", step=0, error_class=type(exc).__name__, message=message,
                  traceback=traceback.format_exc()[-4000:])
        return 1
    sink.emit("finished", step=0, files=files, seconds=round(time.monotonic() - started, 2))
    return 0
