from .cli import main

if __name__ == "__main__":  # spawned decoder processes import this module too
    main()
