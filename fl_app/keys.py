"""Every key the server and the clients exchange, and every key a client keeps.

One name per fact: the strategy writes a fit config with these keys and the client
reads it with the same constants, so a renamed key is a changed constant here, not a
string hunted through both sides. The values are part of the app's contract: nodes
keep client state on disk under the state keys and old runs' checkpoints name the
config keys, so a value here never changes (a new fact gets a new key).

A leaf: this module imports nothing.
"""

from __future__ import annotations

# ------------------------------------------------------------- fit and evaluate config
SERVER_ROUND = "server-round"
LEARNING_RATE = "learning-rate"
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
SEED = "seed"
#: The partition a message concerns, when the server deals them (simulation); also a
#: node-config key, when each node holds its own (deployment).
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
#: The partitions a packed message trains in turn (comma-separated), when the server
#: deals several virtual clients to one node (``clients-per-message``).
PARTITION_IDS = "partition-ids"
#: The run folder's name: where clients keep state that outlives the run.
EXPERIMENT = "experiment"
#: Central DP under SecAgg+: clients clip their own update to this L2 norm.
DP_CLIP = "dp-clip-norm"
#: FedProx's mu; the key Flower's own ``FedProx`` strategy sends.
PROXIMAL_MU = "proximal_mu"
#: SCAFFOLD on: the server variate follows the weights.
SCAFFOLD = "scaffold"

# ------------------------------------------------------------- what clients report
TRAIN_LOSS = "train_loss"  # fit metric
TRAIN_SECONDS = "train_seconds"  # fit metric: wall seconds of the local training
REPORTED_PARTITION = "partition_id"  # fit metric
SCAFFOLD_STATE_ROUNDS = "scaffold_state_rounds"  # fit metric: rounds c_i was kept
#: Fit metric: the Ray node that trained the client (its hex id; "" outside Ray).
RAY_NODE = "ray_node"
#: Fit metric of a packed reply: one JSON entry per client, in the order dealt
#: (``{"partition", "num_examples", "num_arrays", "metrics"}``).
PACKED = "packed"
#: Fit metric: the share of its local steps a client took (below 1: FedProx's partial
#: work, a simulated device that could not finish by the round's deadline).
WORK_DONE = "work_done"
ACCURACY = "accuracy"  # evaluate metric
NUM_EXAMPLES = "num-examples"  # get_properties

# ------------------------------------------------------------- node config
STATE_DIR = "state-dir"  # where a node keeps client state that outlives a run

# ------------------------------------------------------------- client state
RESIDUAL = "compression.residual"  # error feedback's residual
SCAFFOLD_VARIATE = "scaffold.c_i"
SCAFFOLD_ROUNDS = "scaffold.rounds"  # a ConfigRecord {"rounds": n}
