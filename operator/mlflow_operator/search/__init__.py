"""Search algorithms that need a library (a TrainingSweep's `tpe`): imported only by a sweep
that uses one, so an operator without such sweeps never loads the library."""
