"""kNN evaluation of a TrainState on the configured dataset (DINO protocol)."""
from __future__ import annotations

from ssl_jax.eval.features import extract_features
from ssl_jax.eval.knn import knn_accuracy


def evaluate_knn(config, method, state, mesh) -> dict[str, float]:
    """{'knn_top1@k': accuracy} for each k in config.eval.knn_k, on the eval split."""
    variables = method.eval_variables(state)
    train_x, train_y = extract_features(config, method, variables, state.model_state, config.eval.train_split, mesh)
    test_x, test_y = extract_features(config, method, variables, state.model_state, config.eval.test_split, mesh)
    return {f"knn_top1@{k}": knn_accuracy(train_x, train_y, test_x, test_y, k=k,
                                          temperature=config.eval.knn_temperature,
                                          num_classes=config.dataset.num_classes)
            for k in config.eval.knn_k}
