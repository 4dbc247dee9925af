"""How every script ends: one line on stderr and an exit status (docs/A3-errors.md), never a traceback.

run_script(main) is every script's __main__: bad input and disk errors end with one line and exit status 2,
Ctrl-C with 130."""
import sys

from plumbing.files import OutDirError, WriteError, claim_out_dir


# docs/A3-errors.md
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_CHECK_FAILED, EXIT_PROCESS_LOST, EXIT_INTERRUPTED = 2, 3, 4, 5, 130


def fail(message, code=EXIT_BAD_INPUT):
    """End the program: 'error: message' on stderr, exit status `code`."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def write_or_fail(path, write, kept):
    """write(path) -> what it returns; a disk error (full, no permission) ends the program with one line, exit 2."""
    try:
        return write(path)
    except OSError as err:
        fail(f"cannot write {err.filename or path} ({err.strerror or err}); {kept}")


def load_data_or_exit(parser, args, batch_size=1):
    """Claim args.out, load MNIST as args says -> (train, validation or None, test) datasets.

    Reads args.data_dir, args.train_subset and args.val_size (0 and None when the script has no such
    flag). Any bad input ends the program with one line and exit status 2.
    """
    import mnist_data  # here, not at the top: verify_vectors.py needs no MNIST (and no torch)

    try:
        if not getattr(args, "resume", None):  # a resumed run writes into its own folder, which holds its files
            claim_out_dir(args.out)
        splits = mnist_data.load_mnist(args.data_dir, getattr(args, "train_subset", None),
                                       getattr(args, "val_size", 0))
    except (mnist_data.DataError, OutDirError) as err:
        fail(err)
    if batch_size > len(splits[0]):
        parser.error(f"argument --batch-size: {batch_size} is larger than the {len(splits[0])} training images")
    return splits


QUICK_EXIT = False  # True in a worker of a multi-process study (plumbing/processes.py): a failure ends it at once


def run_script(main, argv=None):
    """Every script's entry point: main(argv); Ctrl-C -> exit 130, a disk error -> one line and exit 2.

    A script that has finished part of its work writes it before it lets Ctrl-C through (its own
    except KeyboardInterrupt); what reaches this function has nothing left to save. In a worker of a
    multi-process study, any status but 0 ends the process at once: JAX's orderly shutdown would wait
    for the other processes, and the others learn that this one is gone at their next collective.
    """
    try:
        _run(main, argv)
    except SystemExit as end:
        if QUICK_EXIT and end.code not in (0, None):
            from plumbing import processes

            processes.stop(end.code)
        raise


def _run(main, argv):
    from plumbing.processes import PeerLost  # here: plumbing.processes itself imports this module

    try:
        main(argv)
    except PeerLost as err:  # before the study began (its training loops catch their own): nothing was written
        fail(f"{err}; the study stopped before it began", EXIT_PROCESS_LOST)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); every file written before is complete", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except WriteError as err:
        fail(f"cannot write {err.filename} ({err.strerror}); every file written before is complete")
    except OSError as err:  # reading, say: the data's own errors are DataError, with their own message
        fail(f"{err.filename or 'a file'}: {err.strerror or err}")


def claim_out_dir_or_exit(path):
    """claim_out_dir, or end the program with one line and exit status 2."""
    try:
        claim_out_dir(path)
    except OutDirError as err:
        fail(err)
