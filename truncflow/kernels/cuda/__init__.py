"""The kernels in ``numba.cuda`` (issue 13): the same passes as the CPU kernels, on a GPU.

Imported only when a dataset is moved to a GPU (:mod:`truncflow.device`): a CPU-only
installation never imports ``numba.cuda``. One module per job, as on the CPU side:

    launch      rounded arithmetic, launch geometry, fixed-order reduction, scratch
    forward     truncation maps and activation patterns of device arrays
    gradient    cost + cumulative gradient (+ per cluster, + output cost); with its
                moment sums, the cluster statistics
    statistics  the statistics' moment entries (counts, first and second moments)
    observe     the observables of a record and the per-cluster sums of the points

Layout. A block of T threads takes a *tile* of T consecutive points, one point per
thread; blocks take tiles g, g + G, g + 2G, ... (G blocks). Each thread runs the
forward and reverse sweep of its point in the block's scratch (feature-major, the
point's index last, so a warp's loads coalesce). The sums over the tile's points are
then taken by *owner* threads: each entry of the result (a weight of dC/dW^(l), a
count, a moment) belongs to one thread of the block, which adds the tile's T terms in
point order into the block's row of an accumulator (float64). A last kernel adds the
G rows in order. No atomics: the result is the same bits from run to run on one
device, for any batch size of a given geometry.
"""
