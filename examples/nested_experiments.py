"""Nested experiments: "Remote Functions Within Remote Functions" from the Ray tutorial
(seed 001).

Each ``run_experiment`` task launches ten ``sub_experiment`` tasks of its own and sums their
results, so several experiments, each parallel inside, run in parallel.
"""

import zray


@zray.remote
def sub_experiment(i, j):
    # Run the jth sub-experiment for the ith experiment.
    return i + j


@zray.remote
def run_experiment(i):
    # Launch ten sub-experiments in parallel and return the sum of their results.
    sub_results = [sub_experiment.remote(i, j) for j in range(10)]
    return sum(zray.get(sub_results))


def main():
    zray.init(num_cpus=2)
    try:
        results = zray.get([run_experiment.remote(i) for i in range(5)])
    finally:
        zray.shutdown()
    assert results == [45, 55, 65, 75, 85], results
    print(f"experiment results: {results}")
    return results


if __name__ == "__main__":
    main()
