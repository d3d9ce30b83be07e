//! The task ledger on sled: one tree of JSON task records keyed by id. `put` flushes before
//! it returns, so a task reported as created survives a crash of the process.

use std::path::{Path, PathBuf};

use creature_actors::ports::{StoreError, Task, TaskStore};

/// Task records in a sled database under the data directory.
pub struct SledTaskStore {
    db: sled::Db,
    tasks: sled::Tree,
    path: PathBuf,
}

impl std::fmt::Debug for SledTaskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledTaskStore")
            .field("path", &self.path)
            .finish()
    }
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl SledTaskStore {
    /// Open (or create) the ledger in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir)
            // The ledger is small; a modest cache keeps the brain's memory flat.
            .cache_capacity(8 * 1024 * 1024)
            .open()
            .map_err(|e| {
                StoreError::Io(format!("cannot open task ledger at {}: {e}", dir.display()))
            })?;
        let tasks = db.open_tree("tasks").map_err(io)?;
        Ok(SledTaskStore {
            db,
            tasks,
            path: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl TaskStore for SledTaskStore {
    fn next_id(&self) -> Result<u64, StoreError> {
        // sled persists id blocks, so ids stay unique across restarts (gaps are fine).
        Ok(self.db.generate_id().map_err(io)? + 1)
    }

    fn put(&self, task: &Task) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(task).map_err(|e| StoreError::Io(e.to_string()))?;
        self.tasks.insert(task.id.as_bytes(), bytes).map_err(io)?;
        self.tasks.flush().map_err(io)?;
        Ok(())
    }

    fn put_lazy(&self, task: &Task) -> Result<(), StoreError> {
        // sled flushes on its own within half a second.
        let bytes = serde_json::to_vec(task).map_err(|e| StoreError::Io(e.to_string()))?;
        self.tasks.insert(task.id.as_bytes(), bytes).map_err(io)?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
        match self.tasks.get(id.as_bytes()).map_err(io)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        id: id.to_string(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    fn list(&self) -> Result<Vec<Task>, StoreError> {
        let mut all = Vec::new();
        for entry in self.tasks.iter() {
            let (key, bytes) = entry.map_err(io)?;
            let id = String::from_utf8_lossy(&key).into_owned();
            match serde_json::from_slice::<Task>(&bytes) {
                Ok(task) => all.push(task),
                // One bad record must not hide the rest of the ledger.
                Err(e) => tracing::error!(%id, cause = %e, "skipping corrupt task record"),
            }
        }
        all.sort_by(|a, b| {
            a.created_ms
                .cmp(&b.created_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use creature_actors::ports::{Action, PhysicalTask, TaskSource, TaskState};

    fn task(store: &SledTaskStore, object: &str) -> Task {
        let args = PhysicalTask {
            action: Action::PickUp,
            object: object.into(),
            destination: None,
            utterance: format!("pick up the {object}"),
            confidence: 0.8,
        };
        Task::new(
            format!("task-{:06}", store.next_id().unwrap()),
            args,
            TaskSource::Api,
            None,
        )
    }

    #[test]
    fn tasks_survive_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b) = {
            let store = SledTaskStore::open(dir.path()).unwrap();
            let a = task(&store, "cup");
            let mut b = task(&store, "ball");
            store.put(&a).unwrap();
            store.put(&b).unwrap();
            b.transition(TaskState::Dispatched, None).unwrap();
            store.put(&b).unwrap();
            (a, b)
        };
        let store = SledTaskStore::open(dir.path()).unwrap();
        let all = store.list().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(store.get(&a.id).unwrap().unwrap(), a);
        let again = store.get(&b.id).unwrap().unwrap();
        assert_eq!(again.state, TaskState::Dispatched);
        b.history.truncate(2);
        assert_eq!(again.history.len(), 2);
        // Ids keep going up after a reopen.
        let next = store.next_id().unwrap();
        let last: u64 = all
            .iter()
            .map(|t| t.id[5..].parse::<u64>().unwrap())
            .max()
            .unwrap();
        assert!(next > last, "{next} after {last}");
    }

    #[test]
    fn a_corrupt_record_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledTaskStore::open(dir.path()).unwrap();
        let good = task(&store, "cup");
        store.put(&good).unwrap();
        store
            .tasks
            .insert("task-bad", b"{not json".to_vec())
            .unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        let err = store.get("task-bad").unwrap_err();
        assert!(err.to_string().contains("task-bad"), "{err}");
    }
}
