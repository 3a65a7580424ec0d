"""The command-line programs: megaraptr-train (train, its flags and preflight checks, the pipeline run), megaraptr-config (validate, explain, sweep) and the pipeline simulator."""
