"""Policy gradient: "Learning to Play Pong" from the Ray documentation (seed 001), in numpy.

Instead of Pong in the OpenAI Gym, a tiny "catch the ball" game: a ball falls from a random
column of a 7-wide board, and a paddle at the bottom moves left, stays or moves right each step;
+1 for a catch, -1 for a miss. The policy is a linear softmax over the one-hot offset of the
ball from the paddle. As in the seed, rollout *actors* each own an environment and return a
REINFORCE gradient and the mean reward of a batch of episodes played with the weights the
driver put in the object store; the driver averages the gradients and takes a step.
"""

import numpy as np

import zray

WIDTH, HEIGHT, N_ACTORS, EPISODES, ITERATIONS, LEARNING_RATE = 7, 6, 4, 25, 12, 3.0


class CatchEnv:
    def __init__(self, rng):
        self.rng = rng

    def reset(self):
        self.ball, self.height, self.paddle = int(self.rng.integers(WIDTH)), HEIGHT, WIDTH // 2
        return self.observe()

    def observe(self):  # one-hot offset of the ball from the paddle
        return np.eye(2 * WIDTH - 1)[self.ball - self.paddle + WIDTH - 1]

    def step(self, action):  # action 0, 1, 2: move left, stay, move right
        self.paddle = int(np.clip(self.paddle + action - 1, 0, WIDTH - 1))
        self.height -= 1
        done = self.height == 0
        reward = (1.0 if self.ball == self.paddle else -1.0) if done else 0.0
        return self.observe(), reward, done


@zray.remote
class RolloutWorker:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.env = CatchEnv(self.rng)  # each actor owns an environment

    def compute_gradient(self, weights, episodes):
        grads, rewards = [], []
        for _ in range(episodes):
            obs, done, grad = self.env.reset(), False, np.zeros_like(weights)
            while not done:
                probs = np.exp(obs @ weights)  # a softmax; obs is one-hot, logits stay small
                probs /= probs.sum()
                action = self.rng.choice(3, p=probs)
                grad += np.outer(obs, np.eye(3)[action] - probs)  # d log pi(action | obs)
                obs, reward, done = self.env.step(action)
            grads.append(grad)
            rewards.append(reward)
        advantages = np.array(rewards) - np.mean(rewards)  # the batch mean is the baseline
        return np.tensordot(advantages, grads, axes=1) / episodes, float(np.mean(rewards))


def main():
    weights, history = np.zeros((2 * WIDTH - 1, 3)), []
    zray.init(num_cpus=2)
    try:
        actors = [RolloutWorker.remote(seed) for seed in range(N_ACTORS)]
        for iteration in range(ITERATIONS):
            weights_ref = zray.put(weights)
            results = zray.get([a.compute_gradient.remote(weights_ref, EPISODES) for a in actors])
            weights = weights + LEARNING_RATE * np.mean([g for g, _ in results], axis=0)
            history.append(float(np.mean([r for _, r in results])))
            print(f"iteration {iteration:2d}: average reward {history[-1]:+.2f}")
    finally:
        zray.shutdown()
    first, last = np.mean(history[:3]), np.mean(history[-3:])
    assert last > first + 1.0, history  # from mostly misses to mostly catches
    print(f"policy gradient OK: average reward {first:+.2f} -> {last:+.2f}")


if __name__ == "__main__":
    main()
