//! cellos-init: PID 1 of a cellos node.
