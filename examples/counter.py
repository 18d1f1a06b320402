"""Counter actors: the "Using an actor" example from the Ray documentation (seed 001).

Methods on different actors run in parallel; methods on one actor run one at a time, in the
order they were called, and share the actor's state. Ten counters incremented once each all
read 1; the first one incremented five more times reads 2, 3, 4, 5, 6.
"""

import zray


@zray.remote
class Counter:
    def __init__(self):
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value


def main():
    zray.init(num_cpus=2)
    try:
        # Create ten actors.
        counters = [Counter.remote() for _ in range(10)]
        # Increment each counter once: these calls run in parallel on ten actors.
        once = zray.get([c.increment.remote() for c in counters])
        print("each counter incremented once:", once)
        # Increment the first counter five times: these calls run serially and share state.
        five = zray.get([counters[0].increment.remote() for _ in range(5)])
        print("first counter incremented five more times:", five)
    finally:
        zray.shutdown()
    assert once == [1] * 10, once
    assert five == [2, 3, 4, 5, 6], five
    return once, five


if __name__ == "__main__":
    main()
