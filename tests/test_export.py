"""regraft.export: each format round-trips, ONNX predicts like the run, failures are refused clearly.

Runs are built without training: a zoo model with a grafted head, its model.json from
``_pipeline.model_card`` and its weights from ``RunDir.save_weights``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from regraft.errors import ConfigError, ExportError, MissingDependencyError
from regraft.export import ExportResult, export, predict_onnx
from regraft.inference import load_run
from tests.helpers import make_run_folder
from tests.imagegen import class_colour, make_image

pytest.importorskip("onnxruntime")

CLASSES = ["blue", "green", "red"]


def make_run(path: Path, *, model: str, classes: list[str], size: int, interpolation: str = "bicubic", **kw) -> Path:
    return make_run_folder(path, model=model, classes=classes, size=size, interpolation=interpolation, **kw)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run", model="timm:test_resnet", classes=CLASSES, size=32)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Square, portrait, landscape and grayscale images: every resize/crop path is taken."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, name in enumerate(CLASSES * 2):
        make_image(class_colour(name), 40 + 4 * i, rng).save(folder / f"{i}_{name}.png")
    make_image(class_colour("red"), 60, rng).crop((0, 0, 44, 60)).save(folder / "portrait.png")
    make_image(class_colour("blue"), 60, rng).crop((0, 0, 60, 37)).save(folder / "landscape.png")
    make_image(class_colour("green"), 36, rng).convert("L").save(folder / "gray.png")
    return folder


@pytest.fixture(scope="module")
def batch(run_dir: Path, images: Path) -> torch.Tensor:
    from regraft.data.imageio import load_image

    transform = load_run(run_dir).transform()
    return torch.stack([transform(load_image(p)) for p in sorted(images.iterdir())])


@pytest.fixture(scope="module")
def onnx_result(run_dir: Path) -> ExportResult:
    return export(run_dir, format="onnx")


def _eager(run_dir: Path, batch: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return load_run(run_dir).model(batch).numpy()


def test_onnx_export_has_dynamic_batch_and_matches_eager_on_images(run_dir, batch, onnx_result):
    import onnx
    import onnxruntime as ort

    assert onnx_result.path == run_dir / "export" / "model.onnx" and onnx_result.path.is_file()
    assert onnx_result.max_abs_diff < 1e-4 and onnx_result.batch_sizes == (2, 3)
    dim0 = onnx.load(str(onnx_result.path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    session = ort.InferenceSession(str(onnx_result.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
    want = _eager(run_dir, batch)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() < 1e-4
    card = json.loads(onnx_result.model_json.read_text())
    assert onnx_result.model_json == run_dir / "export" / "model.json"
    assert card["classes"] == CLASSES and card["preprocessing"]["input_size"] == [3, 32, 32]
    assert card["preprocessing"]["interpolation"] == "bicubic" and card["preprocessing"]["crop_pct"] == 0.875
    entry = card["exports"]["onnx"]
    assert entry["file"] == "model.onnx" and entry["format"] == "onnx" and entry["input"] == "input"


def _load_torch_export(fmt: str, path: Path, run_dir: Path):
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    if fmt == "exported":
        return torch.export.load(str(path)).module()
    from safetensors.torch import load_file

    from regraft.inference import build_model_from_card

    model = build_model_from_card(json.loads((path.parent / "model.json").read_text()))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize(("fmt", "ext"), [("torchscript", ".pt"), ("exported", ".pt2"), ("safetensors", ".safetensors")])
def test_torch_formats_round_trip_with_same_top1(fmt, ext, run_dir, batch, tmp_path):
    result = export(run_dir, format=fmt, out=tmp_path / f"clf{ext}")
    assert result.path == tmp_path / f"clf{ext}" and result.model_json == tmp_path / "clf.json"
    assert result.max_abs_diff < 1e-4
    (tmp_path / "model.json").write_text(result.model_json.read_text())  # what safetensors rebuilds from
    loaded = _load_torch_export(fmt, result.path, run_dir)
    with torch.no_grad():
        got = loaded(batch).numpy()
        got3 = loaded(batch[:3]).numpy()  # another batch size than the one exported with
    want = _eager(run_dir, batch)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() < 1e-4 and np.abs(got3 - want[:3]).max() < 1e-4
    assert json.loads(result.model_json.read_text())["exports"][fmt]["file"] == f"clf{ext}"


def test_predict_onnx_matches_predict_from_the_run(run_dir, images, onnx_result):
    from regraft.inference import predict

    from_run = predict(run_dir, [images], topk=3, device="cpu")
    from_onnx = predict_onnx(onnx_result.path, [images], topk=3)
    _assert_same_predictions(from_onnx, from_run)


def _assert_same_predictions(got: list[dict], want: list[dict]) -> None:
    assert [r["path"] for r in got] == [r["path"] for r in want] and len(want) == 9
    for g, w in zip(got, want, strict=True):
        assert [t["class"] for t in g["top"]] == [t["class"] for t in w["top"]], g["path"]
        assert np.allclose([t["prob"] for t in g["top"]], [t["prob"] for t in w["top"]], rtol=0, atol=1e-4), g["path"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "regraft", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_export_then_predict_from_onnx_matches_predict_from_run(run_dir, images, tmp_path):
    out = tmp_path / "deploy" / "clf.onnx"
    done = _cli("export", str(run_dir), "--format", "onnx", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout and f"wrote {out.with_suffix('.json')}" in done.stdout
    assert "max abs diff vs eager PyTorch:" in done.stdout
    from_onnx = _cli("predict", str(out), str(images), "--topk", "3", "--json")
    from_run = _cli("predict", str(run_dir), str(images), "--topk", "3", "--json", "--device", "cpu")
    assert from_onnx.returncode == 0 and from_run.returncode == 0, from_onnx.stderr + from_run.stderr
    _assert_same_predictions(json.loads(from_onnx.stdout), json.loads(from_run.stdout))


def test_exports_of_one_run_share_model_json_and_another_run_replaces_it(run_dir, tmp_path):
    export(run_dir, format="torchscript", out=tmp_path)
    loaded = load_run(run_dir)
    loaded.model.train()
    export(loaded, format="safetensors", out=f"{tmp_path}/")
    assert loaded.model.training  # exported in eval mode, the caller's mode given back
    card = json.loads((tmp_path / "model.json").read_text())
    assert set(card["exports"]) == {"torchscript", "safetensors"}
    assert {k: v for k, v in card.items() if k != "exports"} == json.loads((run_dir / "model.json").read_text())
    other = make_run(tmp_path / "other", model="timm:test_resnet", classes=["a", "b"], size=32)
    export(other, format="safetensors", out=tmp_path)
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["classes"] == ["a", "b"] and set(card["exports"]) == {"safetensors"}


def test_safetensors_export_carries_the_card_in_its_metadata(run_dir, tmp_path):
    from safetensors import safe_open

    result = export(run_dir, format="safetensors", out=tmp_path / "w.safetensors")
    with safe_open(str(result.path), framework="pt") as fh:
        card = json.loads(fh.metadata()["regraft_card"])
    assert card["classes"] == CLASSES and card["architecture"]["name"] == "test_resnet"


def test_run_weights_load_into_plain_timm_and_torchvision_builders(run_dir, tmp_path, batch):
    import timm
    import torchvision
    from safetensors.torch import load_file

    plain = timm.create_model("test_resnet", num_classes=len(CLASSES))
    plain.load_state_dict(load_file(str(run_dir / "model.safetensors")), strict=True)
    with torch.no_grad():
        assert torch.equal(plain.eval()(batch), load_run(run_dir).model(batch))
    tv_run = make_run(tmp_path / "tv", model="torchvision:resnet18", classes=["a", "b", "c", "d"], size=32, interpolation="bilinear")
    tv = torchvision.models.get_model("resnet18", weights=None, num_classes=4)
    tv.load_state_dict(load_file(str(tv_run / "model.safetensors")), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tv.eval()(x), load_run(tv_run).model(x))


def test_missing_onnxruntime_names_the_extra(run_dir, onnx_result, images, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"needs the onnxruntime package.*pip install 'regraft\[export\]'"):
        export(run_dir, format="onnx", out=tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(MissingDependencyError, match=r"pip install 'regraft\[export\]'"):
        predict_onnx(onnx_result.path, [images])


def test_export_above_tolerance_is_refused_and_nothing_written(run_dir, monkeypatch, tmp_path):
    from regraft.export import formats as _export_formats

    real = _export_formats.reload
    monkeypatch.setattr(_export_formats, "reload", lambda fmt, data, *, model: (lambda x: real(fmt, data, model=model)(x) + 0.5))
    with pytest.raises(ExportError, match=r"differs from eager PyTorch by up to 0\.5.*more than atol 0\.001; nothing was written"):
        export(run_dir, format="torchscript", out=tmp_path / "m.pt")
    assert not any(tmp_path.iterdir())
    assert export(run_dir, format="torchscript", out=tmp_path / "m.pt", atol=1.0).max_abs_diff == pytest.approx(0.5)


def test_export_whose_batch_axis_is_frozen_is_refused(run_dir, monkeypatch, tmp_path):
    from regraft.export import formats as _export_formats

    monkeypatch.setattr(_export_formats, "reload", lambda fmt, data, *, model: (lambda x: model(x[:2])))
    with pytest.raises(ExportError, match=r"shape \(2, 3\) for a batch of 3.*batch axis is not dynamic"):
        export(run_dir, format="exported", out=tmp_path / "m.pt2")


def test_bad_options_say_what_is_expected(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="format must be one of onnx, torchscript, exported, safetensors, hf; got 'tflite'"):
        export(run_dir, format="tflite")
    with pytest.raises(ConfigError, match=r"torchscript export is written to a \.pt or \.ts or \.torchscript file; pass --out .*m\.pt"):
        export(run_dir, format="torchscript", out=tmp_path / "m.bin")
    with pytest.raises(ConfigError, match="opset 17 applies to the onnx format only"):
        export(run_dir, format="safetensors", opset=17)
    with pytest.raises(ConfigError, match=r"atol must be a number >= 0; got -1"):
        export(run_dir, format="safetensors", atol=-1)


def test_onnx_without_its_model_json_says_how_to_fix(onnx_result, images, tmp_path):
    lonely = tmp_path / "clf.onnx"
    shutil.copy(onnx_result.path, lonely)
    with pytest.raises(ExportError, match=r"no clf\.json beside .*clf\.onnx.*regraft export RUN --format onnx"):
        predict_onnx(lonely, [images])


def test_onnx_preprocessing_crops_like_torchvision():
    from torchvision.transforms.v2 import functional as TF

    from regraft.data.views import center_crop, crop_box, eval_resize

    assert eval_resize((256, 256), 1.0, "bilinear").target(300, 200) == (384, 256)  # landscape: height to 256
    assert eval_resize((256, 256), 1.0, "bilinear").target(200, 301) == (256, 385)  # torchvision truncates the long side
    assert eval_resize((20, 30), 1.0, "bilinear").target(50, 50) == (30, 20)  # non-square inputs resize exactly
    assert crop_box(40, 37, (32, 32)) == (4, 2)  # round((37 - 32) / 2) = 2 (banker's)
    rng = np.random.default_rng(0)
    for h, w, ch, cw in [(40, 37, 32, 32), (30, 30, 33, 33), (31, 50, 36, 20), (10, 12, 13, 7)]:
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        want = TF.center_crop(torch.from_numpy(pixels).permute(2, 0, 1), [ch, cw]).permute(1, 2, 0).numpy()
        assert np.array_equal(center_crop(pixels, (ch, cw)), want), (h, w, ch, cw)


def test_predict_onnx_runs_without_importing_torch(onnx_result, images):
    code = (
        "import json, sys\n"
        "from regraft.export import predict_onnx\n"
        f"results = predict_onnx({str(onnx_result.path)!r}, [{str(images)!r}], topk=1)\n"
        "print(json.dumps({'n': len(results), 'torch': 'torch' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"n": 9, "torch": False}


def test_onnx_falls_back_to_the_torchscript_exporter_when_capture_fails(run_dir, batch, monkeypatch, tmp_path, caplog):
    real = torch.onnx.export

    def no_capture(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("data-dependent control flow")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_capture)
    result = export(run_dir, format="onnx", out=tmp_path / "m.onnx")
    assert result.details["exporter"] == "torchscript" and result.max_abs_diff < 1e-4
    assert "falling back to the TorchScript-based one" in caplog.text
    assert json.loads(result.model_json.read_text())["exports"]["onnx"]["exporter"] == "torchscript"


# ----------------------------------------------------------------------------- where exports may go


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_export_never_writes_over_another_runs_files(run_dir, tmp_path):
    from regraft.runs import RUN_MARKER

    run_a = make_run(tmp_path / "run_a", model="timm:test_resnet", classes=["a", "b"], size=32)
    (run_a / RUN_MARKER).write_text("{}")
    (run_a / "config.yaml").write_text("model: test_resnet\n")
    before = _files(run_a)
    for out in (run_a, f"{run_a / 'export'}/", f"{run_a / 'deep' / 'er'}/", run_a / "m.safetensors"):
        with pytest.raises(ExportError, match=rf"refusing to export into .*: it belongs to another run \({run_a}\).*pass --out to a folder of its own"):
            export(run_dir, format="safetensors", out=out)
    with pytest.raises(ExportError, match=r"it belongs to the exported run's own folder"):
        export(run_dir, format="safetensors", out=run_dir)  # would replace the run's own weights and card
    assert _files(run_a) == before
    # a folder with only a recipe called config.yaml is not a run; the run's own export/ is fine
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "config.yaml").write_text("model: resnet18\n")
    assert export(run_dir, format="safetensors", out=f"{tmp_path / 'project' / 'deploy'}/").path.is_file()
    assert export(run_dir, format="safetensors", out=f"{run_dir / 'export' / 'v2'}/").path.is_file()


def test_export_into_a_folder_that_cannot_be_written_is_one_line(run_dir, tmp_path, monkeypatch):
    from regraft.export import targets

    def denied(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(targets, "atomic_write_bytes", denied)
    with pytest.raises(ExportError, match=r"cannot write .*m\.safetensors: Permission denied; choose a writable --out"):
        export(run_dir, format="safetensors", out=tmp_path / "m.safetensors")


@pytest.mark.slow
def test_cli_export_into_a_read_only_place_or_a_run_is_one_line(run_dir, tmp_path):
    from tests.helpers import user_error

    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder should be: read-only for every user, root included
    user_error(_cli("export", str(run_dir), "--format", "safetensors", "--out", str(blocker / "sub" / "m.safetensors")), "cannot write")
    user_error(_cli("export", str(run_dir), "--format", "safetensors", "--out", str(run_dir)), "refusing to export into")


def test_onnx_beside_a_model_json_of_another_run_is_refused(onnx_result, images, tmp_path):
    for name, change, match in [
        ("size", lambda c: c["preprocessing"].update(input_size=[3, 64, 64]), r"describes input 3x64x64 but .*takes 3x32x32"),
        ("classes", lambda c: c.update(classes=["a", "b"], num_classes=2), r"names 2 classes but .*outputs 3"),
        ("broken", lambda c: c.pop("preprocessing"), r"is not a usable regraft model\.json: 'preprocessing' is missing"),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(onnx_result.path, folder / "model.onnx")
        card = json.loads(onnx_result.model_json.read_text())
        change(card)
        (folder / "model.json").write_text(json.dumps(card))
        with pytest.raises(ExportError, match=match):
            predict_onnx(folder / "model.onnx", [images])
    from tests.helpers import user_error

    user_error(_cli("predict", str(tmp_path / "classes" / "model.onnx"), str(images)), "names 2 classes but")
