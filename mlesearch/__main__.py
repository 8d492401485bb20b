"""``python -m mlesearch``: runs the MLE-only against MGS demonstration."""

from mlesearch.demo import main

if __name__ == "__main__":
    main()
