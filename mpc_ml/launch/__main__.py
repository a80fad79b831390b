"""`mpiexec -n N python -m mpc_ml.launch JOB_DIR`: one rank of mpc.run(backend="mpi")."""
import sys

from .mpi import rank_main

if len(sys.argv) != 2:
    raise SystemExit("usage: mpiexec -n N python -m mpc_ml.launch JOB_DIR "
                     "(started by mpc.run(backend='mpi'))")
sys.exit(rank_main(sys.argv[1]))
