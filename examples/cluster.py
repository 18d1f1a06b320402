"""Work spread over a cluster started with `zray node start` (see the README's "A cluster").

    zray node start --head --port 6380 --num-cpus 2
    zray node start --peers 127.0.0.1:6380 --host 127.0.0.2 --num-cpus 2
    python examples/cluster.py
    zray node stop
"""

import collections
import time

import numpy

import zray
from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@zray.remote
def where(i):
    time.sleep(0.005)  # a short piece of work
    return zray.get_runtime_context().get_node_id()


@zray.remote
def make():
    return numpy.ones(2_500_000)


@zray.remote
def summed(array):
    return float(array.sum())


zray.init(address="auto")  # the cluster running on this machine (ZRAY_ADDRESS, or a HOST:PORT)
nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in zray.nodes() if n["Alive"]}
print(f"{len(nodes)} nodes, {zray.cluster_resources()['CPU']:g} CPUs")

ran = collections.Counter(zray.get([where.remote(i) for i in range(2000)]))
for node, count in sorted(ran.items(), key=lambda kv: nodes[kv[0]]):
    print(f"  {nodes[node]}: {count} tasks")

spread = zray.get([where.options(scheduling_strategy="SPREAD").remote(i) for i in range(20)])
print(f"SPREAD used {len(set(spread))} nodes")
last = sorted(nodes, key=nodes.get)[-1]
pinned = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(last, soft=False))
assert set(zray.get([pinned.remote(i) for i in range(10)])) == {last}
print(f"pinned to {nodes[last]}: ok")

# A 20 MB array made on one node and summed on another: pulled there, once, in chunks.
first = sorted(nodes, key=nodes.get)[0]
array = make.options(scheduling_strategy=NodeAffinitySchedulingStrategy(first, False)).remote()
total = summed.options(scheduling_strategy=NodeAffinitySchedulingStrategy(last, False))
assert zray.get(total.remote(array)) == 2_500_000.0
print(f"20 MB made on {nodes[first]}, summed on {nodes[last]}: ok")
zray.shutdown()  # the cluster keeps running: `zray node stop` stops it
print("cluster OK")
