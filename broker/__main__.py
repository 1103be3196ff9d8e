"""`python -m broker`: the same entry point as the console script."""

from broker.entry import main

if __name__ == "__main__":
    main()
