"""Hyperparameter search: random search with ``wait`` from the Ray documentation (seed 001).

The seed trains a TensorFlow CNN on MNIST; here a small numpy logistic regression learns a
synthetic two-class data set made with ``np.random.default_rng`` (no downloads). The data is
put in the object store once and every trial reads it by reference. Results are processed as
they finish with ``zray.wait(num_returns=1)``, each finished trial launching a new one until
``N_TRIALS`` have run.
"""

import numpy as np

import zray

N_TRIALS, N_CONCURRENT = 16, 4


def generate_hyperparameters(rng):
    # Randomly choose values for the hyperparameters.
    return {"learning_rate": 10 ** rng.uniform(-3, 1), "batch_size": int(rng.integers(1, 100)),
            "dropout": rng.uniform(0, 1), "stddev": 10 ** rng.uniform(-3, 1)}


def make_data(seed=0, n=3000, d=20):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (x @ rng.normal(size=d) + 0.5 * rng.normal(size=n) > 0).astype(np.float64)
    return x[:2000], y[:2000], x[2000:], y[2000:]


@zray.remote
def train_and_score(hparams, train_x, train_y, val_x, val_y, seed, steps=300):
    """Minibatch SGD with input dropout; returns the validation accuracy."""
    rng = np.random.default_rng(seed)
    w = rng.normal(scale=hparams["stddev"], size=train_x.shape[1])
    keep = 1.0 - hparams["dropout"]
    for _ in range(steps):
        idx = rng.integers(0, len(train_x), size=hparams["batch_size"])
        xb = train_x[idx] * (rng.random(train_x[idx].shape) < keep) / keep
        p = 1 / (1 + np.exp(-np.clip(xb @ w, -30, 30)))
        w -= hparams["learning_rate"] * xb.T @ (p - train_y[idx]) / len(idx)
    return float(np.mean((val_x @ w > 0) == (val_y > 0.5)))


def main():
    rng = np.random.default_rng(42)
    zray.init(num_cpus=2)
    try:
        data = [zray.put(a) for a in make_data()]  # stored once, shared by every trial
        hparams_of: dict[zray.ObjectRef, dict] = {}  # ref -> its trial's hparams

        def launch():
            hparams = generate_hyperparameters(rng)
            ref = train_and_score.remote(hparams, *data, seed=len(hparams_of))
            hparams_of[ref] = hparams
            return ref

        remaining = [launch() for _ in range(N_CONCURRENT)]
        best_score, best_hparams, done = -1.0, {}, 0
        while remaining:
            ready, remaining = zray.wait(remaining, num_returns=1)
            accuracy, done = zray.get(ready[0]), done + 1
            print(f"trial {done:2d}/{N_TRIALS}: accuracy {accuracy:.3f}")
            if accuracy > best_score:
                best_score, best_hparams = accuracy, hparams_of[ready[0]]
            if len(hparams_of) < N_TRIALS:
                remaining.append(launch())  # start a new experiment in place of the finished one
    finally:
        zray.shutdown()
    shown = {k: round(v, 4) for k, v in best_hparams.items()}
    print(f"best accuracy {best_score:.3f} after {done} trials with {shown}")
    return best_score, best_hparams


if __name__ == "__main__":
    main()
