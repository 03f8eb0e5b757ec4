"""Statistics helpers: the cluster bootstrap used by the ablation."""
import numpy as np
import pytest


def test_cluster_bootstrap_counts_documents_not_occurrences():
    from thinkdiff.stats import cluster_bootstrap_mean_ci

    rng = np.random.default_rng(0)
    doc_effect = rng.normal(0, 1, 20)
    clusters = np.repeat(np.arange(20), 10)                     # 10 occurrences per document, strongly correlated
    values = doc_effect[clusters] + rng.normal(0, 0.05, 200)
    m, lo, hi = cluster_bootstrap_mean_ci(values, clusters, 1000, 1)
    _, lo_i, hi_i = cluster_bootstrap_mean_ci(values, np.arange(200), 1000, 1)   # as if independent
    assert lo <= m <= hi and (hi - lo) > 2 * (hi_i - lo_i)
    # redrawn random controls: columns that disagree widen the interval
    same = np.repeat(values[:, None], 4, 1)
    spread = same + np.array([-3, -1, 1, 3])
    w_same = np.subtract(*cluster_bootstrap_mean_ci(same, clusters, 1000, 1)[2:0:-1])
    w_spread = np.subtract(*cluster_bootstrap_mean_ci(spread, clusters, 1000, 1)[2:0:-1])
    assert w_spread > w_same
    assert np.isnan(cluster_bootstrap_mean_ci(values, np.zeros(200), 100, 0)[1])
    with pytest.raises(ValueError, match="clusters"):
        cluster_bootstrap_mean_ci(values, clusters[:-1])
