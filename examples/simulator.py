"""Simulator actor: "Shared Mutable State with Actors" from "Announcing Ray" (seed 002).

The seed's actor wraps an Atari simulator; here it wraps a tiny numpy cart on a line (position
and velocity, noisy pushes from ``np.random.default_rng``). The driver takes a few steps, then
several tasks, each given the actor's handle, run the simulator in turn: each task receives the
previous task's result as an argument, so it starts only when that one is done and picks up
the simulator where it left off.
"""

import numpy as np

import zray

N_TASKS, STEPS_PER_TASK, DRIVER_STEPS = 4, 25, 4


@zray.remote
class Simulator:
    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self):
        self.state, self.steps = np.array([1.0, 0.0]), 0  # position, velocity
        return self.state.copy()

    def step(self, action):
        position, velocity = self.state
        velocity = 0.9 * velocity + 0.1 * action + 0.05 * self.rng.normal()
        self.state = np.array([position + velocity, velocity])
        self.steps += 1
        return self.state.copy(), -abs(self.state[0]), False, {"steps": self.steps}

    def observe(self):
        return self.state.copy(), self.steps


@zray.remote
def run_steps(simulator, n, previous=None):
    # ``previous`` (the last task's result) is only here to order the tasks.
    obs, start = zray.get(simulator.observe.remote())
    reward_sum = 0.0
    for _ in range(n):
        action = -1.0 if obs[0] > 0 else 1.0  # push the cart towards the origin
        obs, reward, _, info = zray.get(simulator.step.remote(action))
        reward_sum += reward
    return start, info["steps"], reward_sum


def main():
    zray.init(num_cpus=2)
    try:
        simulator = Simulator.remote(seed=0)
        zray.get(simulator.reset.remote())
        # Take action 0 a few times from the driver, as the seed does.
        observations = zray.get([simulator.step.remote(0.0) for _ in range(DRIVER_STEPS)])
        results = [None]
        for _ in range(N_TASKS):
            results.append(run_steps.remote(simulator, STEPS_PER_TASK, results[-1]))
        spans = zray.get(results[1:])
        final_state, steps = zray.get(simulator.observe.remote())
    finally:
        zray.shutdown()
    print(f"driver: {DRIVER_STEPS} steps, position {observations[-1][0][0]:+.3f}")
    start = DRIVER_STEPS
    for i, (first, last, reward_sum) in enumerate(spans):
        assert (first, last) == (start, start + STEPS_PER_TASK), (i, first, last, start)
        print(f"task {i}: steps {first + 1}-{last}, reward {reward_sum:+.2f}")
        start = last
    expected = DRIVER_STEPS + N_TASKS * STEPS_PER_TASK
    assert steps == expected, (steps, expected)
    print(f"final state: position {final_state[0]:+.3f}, velocity {final_state[1]:+.3f}")
    print(f"simulator OK: {steps} steps taken (expected {expected})")


if __name__ == "__main__":
    main()
