"""`sparseserve generate` and its model YAML: `--model-config auto` finds configs/models/<model>.yaml
from any working folder (it once looked only under the working folder, and silently ran dense
elsewhere), and the YAML's chat_template is used as `serve` uses it (generate once ignored it)."""
import shutil
import subprocess

import pytest


def generate(tool, model_path, *args, cwd):
    r = subprocess.run([str(tool("sparseserve")), "generate", "--model", str(model_path), "--max-tokens", "8", *args],
                       capture_output=True, text=True, timeout=120, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r


def test_auto_model_config_does_not_depend_on_the_working_folder(tool, model_path, build_dir, repo_root, tmp_path):
    if build_dir.parent != repo_root:
        pytest.skip("the build folder is not inside the source tree")
    r = generate(tool, model_path, "--prompt", "Hi", "--sparsity", "balanced", cwd=tmp_path)
    assert "sparsity profile 'balanced' from" in r.stderr and "smollm2-135m-instruct.yaml" in r.stderr, r.stderr
    # No YAML to be found: dense, and the log says why.
    other = tmp_path / "other.gguf"
    shutil.copyfile(model_path, other)
    r = generate(tool, other, "--prompt", "Hi", cwd=tmp_path)
    assert "no model YAML for" in r.stderr and "sparsity profile 'dense'" in r.stderr, r.stderr


def test_model_yaml_chat_template_is_used(tool, model_path, repo_root, tmp_path):
    yaml = (repo_root / "configs/models/smollm2-135m-instruct.yaml").read_text()
    assert "chat_template: auto" in yaml
    # "chatml" by name: ChatML without the default system prompt SmolLM2's own template injects.
    (tmp_path / "chatml.yaml").write_text(yaml.replace("chat_template: auto", "chat_template: chatml"))
    shutil.copyfile(repo_root / "configs/models/smollm2-135m-instruct.heads.tsv",
                    tmp_path / "smollm2-135m-instruct.heads.tsv")
    chat = ["--chat", "Who made you?"]  # the default system prompt changes the answer
    from_yaml = generate(tool, model_path, *chat, "--model-config", tmp_path / "chatml.yaml", cwd=tmp_path).stdout
    named = generate(tool, model_path, *chat, "--model-config", "none", "--chat-template", "chatml", cwd=tmp_path).stdout
    own = generate(tool, model_path, *chat, "--model-config", "none", cwd=tmp_path).stdout
    assert from_yaml == named and from_yaml != own, (from_yaml, named, own)
