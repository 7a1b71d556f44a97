"""The site's long-running processes: the agent daemon that applies the owner's caps and runs
the site's SuperNode, and the executor that checks each task's Flower app before it forks the
pinned ClientApp (agent/clientapp/)."""
