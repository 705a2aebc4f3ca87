"""The README's library examples run as written, in order, in one namespace (on small slices)."""

import re
from pathlib import Path

import torch


def test_readme_library_examples_run(tmp_path, monkeypatch, mnist):
    text = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md, python block {i + 1}", "exec"), namespace)
    assert (tmp_path / "runs" / "example" / "weights.safetensors").is_file()
    # The per-sample gradients are the gradients of each image alone.
    model, params, x, y, noise = (namespace[k] for k in ("model", "params", "x", "y", "noise"))
    loss = namespace["one_image_loss"]
    for i in (0, 7, 15):
        alone = torch.func.grad(loss)(params, x[i], y[i], {k: v[i] for k, v in noise.items()})
        for k in params:
            torch.testing.assert_close(namespace["per_sample"][k][i], alone[k], rtol=1e-4, atol=1e-6)

    # Your own model, the ensemble and the plain nn.Module did what the README says.
    assert namespace["run"].config.ensemble == 3 and len(namespace["run"].member_test) == 3
    assert namespace["losses"].shape == (4,) and namespace["probs"].shape == (5, 10)
    weights = namespace["weights"]
    with torch.no_grad():
        seen = namespace["net"](weights.model.preprocess(mnist.test_images[:64]))
    torch.testing.assert_close(seen.softmax(1), weights.probabilities(mnist.test_images[:64]))
