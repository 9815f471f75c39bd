"""Model soups (Wortsman et al. 2022): average the weights of models fine-tuned from one checkpoint.

The reference is mlfoundations/model-soups `main.py`:
    uniform soup (Step 3): every ingredient's state dict x 1/N, summed;
    greedy soup (Step 4):  ingredients sorted by decreasing held-out accuracy (ImageNet2p: 2 % of
                           ImageNet train, 26 images per class, left out of fine-tuning: datasets/
                           imagenet.py ImageNet98p / ImageNet2p); the soup starts as the best one,
                           and each next ingredient is added when the soup with it scores strictly
                           higher on the held-out images (`held_out_val_accuracy > best_val_acc_so_far`;
                           the paper's Algorithm 1 writes >=);
and the paper's ensemble baseline: the mean of the ingredients' logits.

Here an ingredient is one `eval/finetune.py` run (backbone + head) of a grid of protocol settings
(lr, augmentation, seed, ...), fine-tuned on the train split less a held-out slice and saved as
SOUP_DIR/<setting>.safetensors (through `ssl_jax.paths`: local or gs://). A saved ingredient is
reused when its settings match, so an interrupted soup resumes.
"""
from __future__ import annotations

import itertools
import json
from typing import Callable, NamedTuple

import numpy as np

from ssl_jax import paths
from ssl_jax.errors import UserError

RESULTS_FILE = "soup.json"


def uniform_soup(ingredients: list[dict]) -> dict:
    """The mean of parameter trees of one structure (main.py's uniform soup), in float64, cast back."""
    import jax

    if len({jax.tree_util.tree_structure(t) for t in ingredients}) != 1:
        raise UserError("the ingredients have different parameter trees (a grid over e.g. global_pool?): "
                        "a soup averages models of one architecture")
    return jax.tree.map(lambda *xs: np.mean(np.stack(xs).astype(np.float64), axis=0).astype(np.asarray(xs[0]).dtype),
                        *ingredients)


class Greedy(NamedTuple):
    params: dict
    chosen: list[int]  # ingredient indices in the order they were added
    held_out_accuracy: float  # the soup's
    tried: list[float]  # held-out accuracy of each soup tried, in order (the first: the best ingredient alone)


def greedy_soup(ingredients: list[dict], held_out_accuracies: list[float],
                held_out_accuracy: Callable[[dict], float]) -> Greedy:
    """main.py's greedy soup: ingredients by decreasing `held_out_accuracies` (ties: the earlier
    first); each is kept when `held_out_accuracy(soup with it)` exceeds the soup's accuracy so far."""
    order = sorted(range(len(ingredients)), key=lambda i: -held_out_accuracies[i])
    chosen, best, tried = [order[0]], held_out_accuracies[order[0]], [held_out_accuracies[order[0]]]
    soup = ingredients[order[0]]
    for i in order[1:]:
        candidate = uniform_soup([ingredients[j] for j in chosen + [i]])
        accuracy = held_out_accuracy(candidate)
        tried.append(accuracy)
        if accuracy > best:
            chosen, best, soup = chosen + [i], accuracy, candidate
    return Greedy(soup, chosen, best, tried)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits [N, C] against labels [N]."""
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


# ------------------------------------------------------------------------------------------------
# The grid of fine-tuning settings


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """['lr=1e-3,3e-4', 'seed=0,1'] -> [('lr', ['1e-3', '3e-4']), ('seed', ['0', '1'])]."""
    grid = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key:
            raise UserError(f"--grid={spec}: write NAME=VALUE,VALUE,... (e.g. --grid=lr=1e-3,3e-4)")
        grid.append((key.strip(), values.split(",")))
    return grid


def settings(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, [{name: value}], in the order given (the last name fastest)."""
    names = [name for name, _ in grid]
    return [dict(zip(names, values)) for values in itertools.product(*(values for _, values in grid))]


def setting_name(setting: dict[str, str]) -> str:
    """{'lr': '1e-3', 'seed': '0'} -> 'lr=1e-3_seed=0' (the ingredient's file name); {} -> 'default'."""
    return "_".join(f"{k}={v}" for k, v in setting.items()) or "default"


def apply_setting(protocol, setting: dict[str, str]):
    """(protocol.finetune with the setting's values, seed). A name is `seed` (protocol.seed), a field of
    protocol.finetune ('randaugment', 'drop_path', 'mixup', ...) or of its optim ('lr', 'weight_decay'),
    or a dotted path in protocol.finetune ('optim.lr'); values take the field's type."""
    cfg, seed = protocol.finetune.copy_and_resolve_references(), protocol.seed
    for name, value in setting.items():
        if name == "seed":
            seed = int(value)
            continue
        parent, field = (cfg.optim, name) if "." not in name and name in cfg.optim else (cfg, name)
        *path, field = field.split(".")
        for part in path:
            parent = parent.get(part) if hasattr(parent, "get") else None
        if parent is None or field not in parent or not isinstance(parent[field], (bool, int, float, str)):
            raise UserError(f"--grid name {name!r} is not a number, string or switch of the protocol's finetune "
                            f"section (fields: seed, {', '.join(sorted(k for k in cfg if k != 'optim'))}, "
                            f"{', '.join(sorted(cfg.optim))})")
        parent[field] = _typed(value, parent[field], name)
    return cfg, seed


def _typed(value: str, current, name: str):
    """`value` parsed as the type of the field's current value."""
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return type(current)(value)
    except ValueError:
        raise UserError(f"--grid {name}={value}: not a {type(current).__name__}") from None


# ------------------------------------------------------------------------------------------------
# Ingredients on disk


def save_params(path, params: dict, metadata: dict[str, str]) -> None:
    """A parameter tree as a safetensors file ('/'-joined names), written whole through a rename."""
    import jax
    from flax import traverse_util
    from safetensors.numpy import save

    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    data = save({k: np.ascontiguousarray(v) for k, v in flat.items()}, metadata=metadata)
    path = paths.resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{path.name}.tmp"
    tmp.write_bytes(data)
    tmp.replace(path)


def load_params(path) -> tuple[dict, dict[str, str]]:
    """(parameter tree, metadata) of a `save_params` file."""
    from flax import traverse_util
    from safetensors.numpy import load

    data = paths.resolve(path).read_bytes()
    metadata = json.loads(data[8:8 + int.from_bytes(data[:8], "little")]).get("__metadata__", {})
    return traverse_util.unflatten_dict(load(data), sep="/"), metadata


# ------------------------------------------------------------------------------------------------
# The whole recipe


def cook(frozen, protocol, grid: list[tuple[str, list[str]]], soup_dir: str, fit_split: str, held_out_split: str,
         printer=print) -> dict:
    """Fine-tunes (or reloads) one ingredient per grid setting on `fit_split`, then scores on the
    held-out and test splits every ingredient, their logit ensemble, the uniform soup and the greedy
    soup (ordered and grown on `held_out_split`). Writes SOUP_DIR/soup.json; returns its content."""
    from ssl_jax.eval.finetune_runs import fine_tune, split_logits

    test_split = frozen.config.eval.test_split
    ingredients, rows, tuner = [], [], None
    for setting in settings(grid):
        cfg, seed = apply_setting(protocol, setting)
        name, recipe = setting_name(setting), json.dumps({"finetune": cfg.to_dict(), "seed": seed,
                                                          "split": fit_split, "checkpoint": frozen.workdir,
                                                          "step": frozen.step}, sort_keys=True)
        path = paths.resolve(soup_dir) / f"{name}.safetensors"
        if path.exists():
            params, metadata = load_params(path)
            if metadata.get("recipe") != recipe:
                raise UserError(f"{path} was fine-tuned with other settings (checkpoint, step, protocol or split); "
                                f"pass another --workdir or delete it")
            printer(f"reusing {path}")
        else:
            tuner, params, losses = fine_tune(frozen, cfg, seed, fit_split)
            save_params(path, params, {"recipe": recipe})
            printer(f"fine-tuned {name}: final loss {losses[-1]:.4f} -> {path}")
        ingredients.append(params)
        rows.append({"name": name, "setting": setting})
    uniform = uniform_soup(ingredients)  # also checks that they share one architecture, so one forward pass
    if tuner is None:  # every ingredient reloaded: a tuner only for its forward pass
        from ssl_jax.data import pipeline
        from ssl_jax.eval.finetune import FineTuner

        tuner = FineTuner(frozen.config, protocol.finetune, ingredients[0]["backbone"],
                          pipeline.eval_num_classes(frozen.config))

    def scores(params, split):
        logits, labels = split_logits(frozen, tuner, params, split)
        return logits, top1(logits, labels), labels

    test_logits = []
    for row, params in zip(rows, ingredients):
        _, row["held_out_top1"], _ = scores(params, held_out_split)
        logits, row["test_top1"], test_labels = scores(params, test_split)
        test_logits.append(logits)
    greedy = greedy_soup(ingredients, [r["held_out_top1"] for r in rows], lambda p: scores(p, held_out_split)[1])
    best = max(rows, key=lambda r: r["held_out_top1"])  # chosen on held-out images, as the soups are
    results = {
        "ingredients": rows,
        "best_single": {"name": best["name"], "held_out_top1": best["held_out_top1"], "test_top1": best["test_top1"]},
        "ensemble": {"test_top1": top1(np.mean(test_logits, axis=0), test_labels)},
        "uniform_soup": {"held_out_top1": scores(uniform, held_out_split)[1], "test_top1": scores(uniform, test_split)[1]},
        "greedy_soup": {"ingredients": [rows[i]["name"] for i in greedy.chosen], "held_out_top1": greedy.held_out_accuracy,
                        "test_top1": scores(greedy.params, test_split)[1], "tried_held_out_top1": greedy.tried},
        "splits": {"fit": fit_split, "held_out": held_out_split, "test": test_split},
        "checkpoint": frozen.workdir, "step": frozen.step,
    }
    paths.write_atomically(paths.resolve(soup_dir) / RESULTS_FILE, json.dumps(results, indent=2))
    printer(format_table(results))
    return results


def format_table(results: dict) -> str:
    """Markdown table: each ingredient, the best single model, the ensemble and both soups (top-1, %)."""
    def pct(value):
        return f"{100 * value:.2f} %"

    lines = ["| model | held-out top-1 | test top-1 |", "|---|---|---|"]
    lines += [f"| {r['name']} | {pct(r['held_out_top1'])} | {pct(r['test_top1'])} |" for r in results["ingredients"]]
    best = results["best_single"]
    lines.append(f"| best single ({best['name']}) | {pct(best['held_out_top1'])} | {pct(best['test_top1'])} |")
    lines.append(f"| ensemble (mean logits) |  | {pct(results['ensemble']['test_top1'])} |")
    for kind in ("uniform_soup", "greedy_soup"):
        lines.append(f"| {kind.replace('_', ' ')} | {pct(results[kind]['held_out_top1'])} | "
                     f"{pct(results[kind]['test_top1'])} |")
    return "\n".join(lines)
