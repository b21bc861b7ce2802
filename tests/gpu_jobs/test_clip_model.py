import hashlib
import os
import shutil
import socket
import subprocess
import sys

import huggingface_hub.constants
import pytest
import torch

from gpu_jobs.clip_model import ClipModelError, load_clip, resolve_device
from infra.config import ClipConfig, ConfigError
from infra.spark import _project_zip


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty weight caches; connection attempts are refused and recorded (libraries may swallow the error)."""
    attempts = []

    def refuse(sock, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip's URL cache is ~/.cache/clip
    yield
    assert not attempts, f"load_clip tried to connect to {attempts}"


def test_unknown_model_lists_close_names():
    with pytest.raises(ClipModelError, match=r"unknown CLIP model 'pairlake-demo-tinny'.*pairlake-demo-tiny"):
        load_clip(ClipConfig(model="pairlake-demo-tinny", pretrained=""), allow_random_init=True)


def test_missing_checkpoint(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ClipModelError, match=f"checkpoint file not found: {missing}"):
        load_clip(ClipConfig(checkpoint=str(missing)))


def test_errors_are_config_errors():
    assert issubclass(ClipModelError, ConfigError)


def test_unknown_pretrained_tag_lists_available(no_network):
    with pytest.raises(ClipModelError, match=r"'no_such_tag' is not available for ViT-B-32; available: openai"):
        load_clip(ClipConfig(model="ViT-B-32", pretrained="no-such-tag"))


def test_model_without_pretrained_tags(no_network):
    with pytest.raises(ClipModelError, match="available: none"):
        load_clip(ClipConfig(model="pairlake-demo-tiny", pretrained="openai"))


def test_pretrained_weights_not_cached_never_download(no_network):
    with pytest.raises(ClipModelError, match=r"weights for ViT-B-32/laion2b_s34b_b79k are not present locally"):
        load_clip(ClipConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))


def test_hf_text_tower_is_looked_up_offline(no_network):
    """A model whose text tower comes from the HF hub fails fast instead of trying to download it."""
    with pytest.raises(ClipModelError, match="roberta-ViT-B-32/random-init from local files only"):
        load_clip(ClipConfig(model="roberta-ViT-B-32", pretrained=""), allow_random_init=True)


def test_quick_gelu_mismatch_names_the_right_model(no_network):
    with pytest.raises(ClipModelError, match="use model ViT-B-32-quickgelu"):
        load_clip(ClipConfig(model="ViT-B-32", pretrained="openai"))


def test_no_weights_needs_explicit_random_init():
    with pytest.raises(ClipModelError, match="no CLIP weights configured"):
        load_clip(ClipConfig(model="pairlake-demo-tiny", pretrained=""))


def test_cuda_is_refused_only_where_there_is_none():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ClipModelError, match="no CUDA device"):
            resolve_device("cuda")


def test_auto_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_checkpoint_loads_weights_and_names_model_by_hash(tmp_path):
    torch.manual_seed(1)
    source = load_clip(ClipConfig(model="pairlake-demo-tiny", pretrained="", device="cpu"), allow_random_init=True)
    assert source.model_id == "pairlake-demo-tiny/random-init"
    path = tmp_path / "tiny.pt"
    # open_clip_train's checkpoint layout: {"state_dict": {"module.<name>": tensor}, ...}
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in source.model.state_dict().items()}}, path)

    clip = load_clip(ClipConfig(model="pairlake-demo-tiny", checkpoint=str(path), pretrained="ignored-when-checkpoint-set", device="cpu"))

    assert clip.model_id == f"pairlake-demo-tiny/sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    assert clip.embedding_dim == 64
    assert not clip.model.training
    for name, tensor in source.model.state_dict().items():
        assert torch.equal(clip.model.state_dict()[name], tensor), name
    assert clip.tokenizer(["a dog"]).shape == (1, 20)  # the demo config's context length


def test_an_executor_with_the_project_as_a_zip_finds_the_model_configs_and_leaves_no_copy(tmp_path):
    """Remote executors import the project from the zip the driver ships (infra.spark)."""
    shipped = shutil.copy(_project_zip(), tmp_path / "pairlake.zip")
    executor_tmp = tmp_path / "executor-tmp"
    executor_tmp.mkdir()
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import gpu_jobs.clip_model as m; "
             "print(m.__file__.startswith(sys.argv[1]), m.model_config('pairlake-demo-tiny')['embed_dim'])")
    result = subprocess.run([sys.executable, "-c", probe, str(shipped)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env={**os.environ, "TMPDIR": str(executor_tmp)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "64"]
    assert list(executor_tmp.glob("pairlake-model-configs-*")) == []
