"""Model soups (`ssl_jax/eval/soups.py`, `python -m ssl_jax.soup`): the uniform soup is the mean of
the ingredients; the greedy soup is model-soups main.py's loop (transcribed below in float64) and
never keeps an ingredient that does not raise the held-out accuracy; ingredients round-trip through
safetensors on gs://; the command line soups two fine-tuned copies of a tiny DINO run trained in
this process, on the real CIFAR-10 files, a second call reuses the saved ingredients, and
notebooks/model_soups.ipynb plots the result."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import main_process
from conftest import REPO, make_smoke_config
from ssl_jax.errors import UserError
from ssl_jax.eval import soups


def tree(w, b):
    return {"head": {"kernel": np.asarray(w, np.float32), "bias": np.asarray(b, np.float32)}}


def test_uniform_soup_of_identical_models_is_that_model():
    rng = np.random.default_rng(0)
    model = tree(rng.normal(size=(3, 4)), rng.normal(size=4))
    soup = soups.uniform_soup([model, model, model])
    for key in ("kernel", "bias"):
        np.testing.assert_array_equal(soup["head"][key], model["head"][key])
        assert soup["head"][key].dtype == np.float32


def test_uniform_soup_of_two_models_is_their_exact_average():
    rng = np.random.default_rng(1)
    a, b = (tree(rng.normal(size=(3, 4)), rng.normal(size=4)) for _ in range(2))
    soup = soups.uniform_soup([a, b])
    for key in ("kernel", "bias"):
        want = ((a["head"][key].astype(np.float64) + b["head"][key].astype(np.float64)) / 2).astype(np.float32)
        np.testing.assert_array_equal(soup["head"][key], want)
    with pytest.raises(UserError, match="different parameter trees"):
        soups.uniform_soup([a, {"head": {"kernel": a["head"]["kernel"]}}])


def reference_greedy(ingredients, accuracies, evaluate):
    """model-soups main.py Step 4 in float64: sort by held-out accuracy (decreasing), start from the
    best, add an ingredient when the running-average soup's held-out accuracy is strictly higher."""
    order = sorted(range(len(ingredients)), key=lambda i: -accuracies[i])
    chosen, best = [order[0]], accuracies[order[0]]
    soup = {k: np.float64(v) for k, v in ingredients[order[0]].items()}
    for i in order[1:]:
        n = len(chosen)
        candidate = {k: soup[k] * (n / (n + 1.0)) + np.float64(ingredients[i][k]) * (1.0 / (n + 1)) for k in soup}
        accuracy = evaluate(candidate)
        if accuracy > best:
            chosen, best, soup = chosen + [i], accuracy, candidate
    return chosen, soup


def test_greedy_soup_never_adds_an_ingredient_that_does_not_raise_held_out_accuracy():
    """One weight w; held-out accuracy falls with |w - 1.2| in steps of 0.01. Ingredient w=1.9 is
    individually second best, but the soup with it scores 0.75, below the best ingredient's own 0.95:
    it must stay out; w=1.4 brings the soup to 1.2 and must go in; w=1.2 then ties the soup (accuracy
    unchanged): main.py's strict > leaves it out."""
    def accuracy(params):
        return 1.0 - np.floor(100 * abs(float(params["w"]) - 1.2)) / 100

    ingredients = [{"w": np.float32(w)} for w in (1.0, 1.9, 1.4, 0.0, 1.2)]
    held_out = [0.95, 0.9, 0.8, 0.5, 0.4]  # as measured on their own (deliberately not accuracy(w))
    greedy = soups.greedy_soup(ingredients, held_out, accuracy)
    want_chosen, want_soup = reference_greedy(ingredients, held_out, accuracy)
    assert greedy.chosen == want_chosen == [0, 2]
    assert float(greedy.params["w"]) == pytest.approx(float(want_soup["w"]), abs=1e-7)
    assert greedy.held_out_accuracy == accuracy(want_soup) == 1.0
    assert greedy.tried == [0.95, accuracy({"w": 1.45}), 1.0, accuracy({"w": 0.8}), 1.0]


def test_grid_settings_and_their_types():
    from ssl_jax.evaluate import load_protocol

    grid = soups.parse_grid(["lr=1e-3,3e-4", "randaugment=,rand-m5-mstd0.5-inc1", "seed=0,1"])
    combos = soups.settings(grid)
    assert len(combos) == 8 and combos[1] == {"lr": "1e-3", "randaugment": "", "seed": "1"}
    assert soups.setting_name(combos[1]) == "lr=1e-3_randaugment=_seed=1"
    protocol = load_protocol("smoke")
    cfg, seed = soups.apply_setting(protocol, {"lr": "3e-4", "randaugment": "", "seed": "1", "global_pool": "false"})
    assert (cfg.optim.lr, cfg.randaugment, seed, cfg.global_pool) == (3e-4, "", 1, False)
    assert protocol.finetune.optim.lr == 5e-4  # the protocol itself is unchanged
    with pytest.raises(UserError, match="'dropout_rate' is not a number, string or switch"):
        soups.apply_setting(protocol, {"dropout_rate": "0.1"})
    with pytest.raises(UserError, match="epochs=two: not a int"):
        soups.apply_setting(protocol, {"epochs": "two"})
    with pytest.raises(UserError, match="write NAME=VALUE"):
        soups.parse_grid(["lr"])


def test_ingredients_round_trip_through_safetensors_on_gcs(tmp_path):
    from test_filesystems import fake_gcs

    params = {"backbone": {"blocks_0": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
              "head": {"bias": np.ones(3, np.float32)}}
    with fake_gcs(tmp_path):
        soups.save_params("gs://bucket/soup/a.safetensors", params, {"recipe": "x"})
        loaded, metadata = soups.load_params("gs://bucket/soup/a.safetensors")
    assert os.listdir(tmp_path / "bucket" / "soup") == ["a.safetensors"] and not os.path.exists("gs:")
    assert metadata == {"recipe": "x"}
    np.testing.assert_array_equal(loaded["backbone"]["blocks_0"]["kernel"], params["backbone"]["blocks_0"]["kernel"])
    np.testing.assert_array_equal(loaded["head"]["bias"], params["head"]["bias"])


def test_held_out_splits():
    from ssl_jax.soup import splits

    assert splits("train", 2, None, None) == ("train[:98%]", "train[98%:]")
    assert splits("train[:500]", 2, "train[:400]", "train[400:500]") == ("train[:400]", "train[400:500]")
    with pytest.raises(UserError, match="already a slice"):
        splits("train[:500]", 2, None, None)


@pytest.fixture(scope="module")
def run(tfds_data_dir, tmp_path_factory):
    """A tiny DINO run of 2 steps, trained in this process (tests/test_evaluate.py's fixture)."""
    from ssl_jax import train

    config = make_smoke_config(num_epochs=1)
    config.steps_per_epoch = 2
    path = str(tmp_path_factory.mktemp("soup_run") / "dino")
    train.train_and_evaluate(config, path)
    return path


@pytest.mark.slow  # the suite's 15-minute CI budget: run with -m slow
def test_soup_command_line_end_to_end(run, tmp_path):
    soup_dir = tmp_path / "soup"
    args = [f"--checkpoint={run}", "--grid=lr=1e-3,1e-4", f"--workdir={soup_dir}",
            f"--protocol={os.path.join(REPO, 'configs', 'eval_protocols.py')}:smoke",
            "--fit_split=train[:400]", "--held_out_split=train[400:500]"]
    proc = main_process.run(args, "ssl_jax.soup")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(soup_dir)) == ["lr=1e-3.safetensors", "lr=1e-4.safetensors", "soup.json"]
    results = json.loads((soup_dir / "soup.json").read_text())
    rows = results["ingredients"]
    assert [r["name"] for r in rows] == ["lr=1e-3", "lr=1e-4"]
    best = max(rows, key=lambda r: r["held_out_top1"])
    assert results["best_single"] == {"name": best["name"], "held_out_top1": best["held_out_top1"],
                                      "test_top1": best["test_top1"]}
    greedy = results["greedy_soup"]
    assert greedy["ingredients"][0] == best["name"] and greedy["held_out_top1"] >= best["held_out_top1"]
    if len(greedy["ingredients"]) == 1:  # the second ingredient did not raise the held-out accuracy
        assert greedy["test_top1"] == best["test_top1"] and greedy["tried_held_out_top1"][1] <= best["held_out_top1"]
    for value in (results["ensemble"]["test_top1"], results["uniform_soup"]["test_top1"]):
        assert 0.0 <= value <= 1.0 and f"{100 * value:.2f} %" in proc.stdout
    assert "| uniform soup |" in proc.stdout and "| greedy soup |" in proc.stdout
    # a second call reuses both ingredients and reproduces every number
    again = main_process.run(args, "ssl_jax.soup")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing") == 2 and "fine-tuned" not in again.stdout
    assert json.loads((soup_dir / "soup.json").read_text()) == results
    other = main_process.run(args[:-2] + ["--fit_split=train[:300]", "--held_out_split=train[400:500]"], "ssl_jax.soup")
    assert other.returncode == 1 and "was fine-tuned with other settings" in other.stderr
    # the notebook plots soup.json (seconds: no model is loaded)
    import nbclient
    import nbformat

    nb = nbformat.read(os.path.join(REPO, "notebooks", "model_soups.ipynb"), as_version=4)
    os.environ["SSL_JAX_NOTEBOOK_SOUP"] = str(soup_dir)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    finally:
        del os.environ["SSL_JAX_NOTEBOOK_SOUP"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert (soup_dir / "model_soups.png").stat().st_size > 0
    table = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})][0]
    assert table == soups.format_table(results)
