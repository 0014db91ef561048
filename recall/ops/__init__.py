"""Operations around runs: the job lock, logs, the crontab, status and the report."""
