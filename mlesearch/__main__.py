"""``python -m mlesearch``: runs the MLE-only against MGS demonstration."""

from mlesearch.experiments.demo import main

if __name__ == "__main__":
    main()
