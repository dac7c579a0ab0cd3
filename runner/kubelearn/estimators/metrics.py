"""Evaluation metrics computed over a whole evaluation pass (not averaged per batch)."""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (ties get the average rank)."""
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    i = 0
    while i < scores.size:
        j = i
        while j + 1 < scores.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _precision_recall(labels: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    tp = float(np.sum(predicted & labels))
    fp = float(np.sum(predicted & ~labels))
    fn = float(np.sum(~predicted & labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall


def classification(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """accuracy, precision, recall and auc; macro-averaged over classes when multi-class."""
    labels = labels.reshape(-1).astype(np.int64)
    classes = probs.argmax(axis=1)
    out = {"accuracy": float(np.mean(classes == labels))}
    if probs.shape[1] == 2:
        truth = labels == 1
        out["precision"], out["recall"] = _precision_recall(truth, classes == 1)
        out["auc"] = auc(truth, probs[:, 1])
        return out
    precisions, recalls, aucs = [], [], []
    for k in range(probs.shape[1]):
        truth = labels == k
        if not truth.any():
            continue
        p, r = _precision_recall(truth, classes == k)
        precisions.append(p)
        recalls.append(r)
        aucs.append(auc(truth, probs[:, k]))
    out["precision"] = float(np.mean(precisions)) if precisions else 0.0
    out["recall"] = float(np.mean(recalls)) if recalls else 0.0
    finite = [a for a in aucs if np.isfinite(a)]
    out["auc"] = float(np.mean(finite)) if finite else float("nan")
    return out


def regression(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """rmse, mae and the label and prediction means."""
    labels = labels.reshape(predictions.shape).astype(np.float64)
    diff = predictions.astype(np.float64) - labels
    return {
        "rmse": float(np.sqrt(np.mean(diff * diff))),
        "mae": float(np.mean(np.abs(diff))),
        "label/mean": float(np.mean(labels)),
        "prediction/mean": float(np.mean(predictions)),
    }
