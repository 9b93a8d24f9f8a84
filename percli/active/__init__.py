"""Active learning: pool-based query strategies (`select_job`: `percli select run`) and a simulation of the
classic AL loop (`simulate`: `percli select simulate`)."""
