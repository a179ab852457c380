"""What every part uses: settings, errors, jobs, the model cache, label config parsing, logs."""
