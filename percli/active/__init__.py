"""Active learning: pool-based query strategies and a simulation of the classic AL loop."""
