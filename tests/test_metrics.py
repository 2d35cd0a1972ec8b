"""mIoU against hand-computed cases."""

import numpy as np
import pytest

from train.evaluate.metrics import confusion, hungarian_match, iou_per_class, summarize


def test_hand_computed_iou():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, -1, 2, 0]])
    conf = confusion(gt, pred, 3)
    # class 0: TP 2 (two 0->0), FN 2 (0->1, 0->none), FP 1 (the 1->... no: gt 1 never -> 0)
    assert conf.tolist() == [[2, 1, 0, 1], [0, 2, 1, 0], [0, 0, 0, 0]]
    iou = iou_per_class(conf)
    assert iou[0] == pytest.approx(2 / 4)  # TP 2 / (TP 2 + FN 2 + FP 0)
    assert iou[1] == pytest.approx(2 / 4)  # TP 2 / (2 + FN 1 + FP 1)
    assert iou[2] == 0.0  # predicted once, absent from gt
    s = summarize(conf, ["a", "b", "c"], unknown=["c"])
    assert s["miou"] == pytest.approx(100 / 3)
    assert s["miou_known"] == pytest.approx(50.0) and s["miou_unknown"] == 0.0
    assert s["hm"] == 0.0
    assert s["pixel_accuracy"] == pytest.approx(100 * 4 / 7)


def test_absent_everywhere_is_left_out():
    gt = np.zeros((2, 2), np.uint8)
    pred = np.zeros((2, 2), np.int32)
    s = summarize(confusion(gt, pred, 3), ["a", "b", "c"], unknown=["b"])
    assert s["per_class"] == {"a": 100.0, "b": None, "c": None}
    assert s["miou"] == 100.0 and s["miou_known"] == 100.0
    assert np.isnan(s["miou_unknown"]) and np.isnan(s["hm"])


def test_ignore_and_all_background():
    gt = np.array([[1, 255], [1, 1]])
    pred = np.full((2, 2), -1)
    conf = confusion(gt, pred, 2)
    assert conf.sum() == 3 and conf[1, 2] == 3
    s = summarize(conf, ["a", "b"], unknown=[])
    assert s["per_class"] == {"a": None, "b": 0.0} and s["miou"] == 0.0


def test_confusion_checks_labels_and_shapes():
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="ground-truth labels"):
        confusion(np.full((2, 2), 7), np.zeros((2, 2)), 2)
    with pytest.raises(ValueError, match="predicted labels"):
        confusion(np.zeros((2, 2)), np.full((2, 2), 5), 2)


def test_hungarian_matches_permuted_clusters():
    gt = np.array([0, 0, 1, 1, 2, 2, 2])
    clusters = np.array([2, 2, 0, 0, 1, 1, 0])  # a relabelled, slightly wrong clustering
    conf = confusion(gt, clusters, 3)
    mapping = hungarian_match(conf)
    assert mapping.tolist() == [1, 2, 0]  # cluster 0 -> class 1, 1 -> 2, 2 -> 0


def test_hungarian_match_leaves_extra_clusters_unmatched():
    """3 clusters for 2 classes: each class takes its best cluster, the third is -1
    (not folded into a class). The confusion is (classes, clusters + 1): the last column
    counts pixels no cluster claimed."""
    conf = np.array([[1, 9, 3, 0], [8, 0, 2, 0]])
    assert hungarian_match(conf).tolist() == [1, 0, -1]
