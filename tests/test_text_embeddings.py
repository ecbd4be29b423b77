"""Precomputed text embeddings: same tensors as the encoder, no encoder loaded, clear errors."""

import pytest
import torch

from scorestudio.priors.embedded import EmbeddedPrior
from scorestudio.priors.text_embeddings import ENV_VAR
from scorestudio.tools.text_embeddings import dataset_captions, main
from scorestudio.utils.config import ConfigError


@pytest.fixture(scope="module")
def embeddings_file(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "prompts.pt"
    main(["--out", str(path), "--prior-arg", f"pretrained_model_name_or_path={tiny[0]}",
          "--prompts", "a red cube", "an icon"])
    return path


def test_precomputed_equal_encoder_and_skip_loading(tiny, embeddings_file):
    live = EmbeddedPrior({"pretrained_model_name_or_path": str(tiny[0])})
    cached = EmbeddedPrior({"pretrained_model_name_or_path": str(tiny[0]), "text_embeddings": str(embeddings_file)})
    assert cached.text_encoder is None and live.text_encoder is not None
    prompts = ["a red cube", "", "an icon", "a red cube"]
    torch.testing.assert_close(cached.encode_text(prompts), live.encode_text(prompts), rtol=0, atol=0)


def test_environment_variable_is_the_default(tiny, embeddings_file, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(embeddings_file))
    prior = EmbeddedPrior({"pretrained_model_name_or_path": str(tiny[0])})
    assert prior.text_encoder is None
    with pytest.raises(ConfigError, match=r"\['a blue cube'\] are not in the text embeddings file"):
        prior.encode_text(["a blue cube"])


def test_missing_file_and_wrong_length(tiny, embeddings_file, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        EmbeddedPrior({"pretrained_model_name_or_path": str(tiny[0]), "text_embeddings": str(tmp_path / "no.pt")})
    data = torch.load(embeddings_file, weights_only=True)
    data["embeddings"] = data["embeddings"][:, :7]
    torch.save(data, tmp_path / "short.pt")
    with pytest.raises(ConfigError, match="7 tokens per prompt, this prior uses 32"):
        EmbeddedPrior({"pretrained_model_name_or_path": str(tiny[0]), "text_embeddings": str(tmp_path / "short.pt")})


def test_dataset_captions_cover_the_generator():
    from scorestudio.data.procedural import ProceduralConfig, ProceduralDataset

    captions = set(dataset_captions())
    assert {"a cube", "a red object", "an icon", "a yellow star icon", "a blue mug, back view"} <= captions
    drawn = ProceduralDataset(ProceduralConfig(seed=3)).batch(256, 0).captions
    assert set(drawn) <= captions


def test_command_line_errors_end_with_one_message(tmp_path, capsys):
    """No traceback: missing weights and an unknown prior end the command with the prior's message
    and how this command takes the prior's settings; a missing prompts file is a usage error (exit 2)."""
    out = str(tmp_path / "p.pt")
    for argv, expected in (
            (["--prior-arg", f"pretrained_model_name_or_path={tmp_path / 'absent'}"], "(?s)absent.*--prior-arg KEY=VALUE"),
            (["--prior", "stable-difusion"], "(?s)Did you mean 'stable-diffusion'.*--prior-arg KEY=VALUE")):
        with pytest.raises(SystemExit, match=expected):
            main(["--out", out, *argv])
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", out, "--prompts-file", str(tmp_path / "absent.txt")])
    assert exit_info.value.code == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "p.pt").exists()
