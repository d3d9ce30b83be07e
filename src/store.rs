//! The task ledger on sled. Records are JSON, keyed by the big-endian number of their id
//! (`task-42` -> 42), so the tree's own order is the creation order; ids come from a
//! counter in the `meta` tree that is written in the same transaction as the tasks it
//! numbers. `create` and `put` flush before they return, so a task reported as created
//! survives a crash of the process.
//!
//! Older ledgers (a `tasks` tree keyed by the id string, ids from sled's `generate_id`) are
//! moved into this layout when opened; new ids continue above the largest one found.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use creature_actors::ports::{
    NewTask, Page, PageOrder, PageQuery, StoreError, Task, TaskState, TaskStore, id_number, task_id,
};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

/// The key of the counter in the `meta` tree: the number of the last id handed out.
const LAST_ID: &[u8] = b"last_id";

/// Task records in a sled database under the data directory.
pub struct SledTaskStore {
    db: sled::Db,
    /// id number (big-endian u64) -> JSON task record.
    ledger: sled::Tree,
    meta: sled::Tree,
    /// The number of the last id handed out (also on disk under `meta/last_id`).
    last_id: Mutex<u64>,
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

fn be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<Task, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        id: be(key).map(task_id).unwrap_or_else(|| format!("{key:?}")),
        reason: e.to_string(),
    })
}

fn encode(task: &Task) -> Result<(u64, Vec<u8>), StoreError> {
    let n = id_number(&task.id).ok_or_else(|| StoreError::Corrupt {
        id: task.id.clone(),
        reason: "not a ledger id (task-<number>)".into(),
    })?;
    let bytes = serde_json::to_vec(task).map_err(|e| StoreError::Io(e.to_string()))?;
    Ok((n, bytes))
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
        let ledger = db.open_tree("ledger").map_err(io)?;
        let meta = db.open_tree("meta").map_err(io)?;
        migrate(&db, &ledger)?;
        let stored = meta.get(LAST_ID).map_err(io)?.and_then(|v| be(&v));
        let largest = ledger
            .last()
            .map_err(io)?
            .and_then(|(k, _)| be(&k))
            .unwrap_or(0);
        let last_id = stored.unwrap_or(0).max(largest);
        Ok(SledTaskStore {
            db,
            ledger,
            meta,
            last_id: Mutex::new(last_id),
            path: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn scan(&self, query: &PageQuery) -> Result<Page, StoreError> {
        let range = match (query.order, query.after) {
            (_, None) => self.ledger.iter(),
            (PageOrder::Asc, Some(c)) => match c.checked_add(1) {
                Some(from) => self.ledger.range(from.to_be_bytes()..),
                None => {
                    return Ok(Page {
                        tasks: vec![],
                        more: false,
                    });
                }
            },
            (PageOrder::Desc, Some(c)) => self.ledger.range(..c.to_be_bytes()),
        };
        let mut entries: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            match query.order {
                PageOrder::Asc => Box::new(range),
                PageOrder::Desc => Box::new(range.rev()),
            };
        let mut tasks = Vec::new();
        let mut more = false;
        for entry in &mut entries {
            let (key, bytes) = entry.map_err(io)?;
            let task = match decode(&key, &bytes) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(cause = %e, "skipping corrupt task record");
                    continue;
                }
            };
            if !query.matches(&task) {
                continue;
            }
            if tasks.len() == query.limit {
                more = true;
                break;
            }
            tasks.push(task);
        }
        Ok(Page { tasks, more })
    }
}

/// Move the records of an older ledger (tree `tasks`, keyed by the id string) into
/// `ledger`. Copy, flush, then drop the old tree: a crash in between copies again.
fn migrate(db: &sled::Db, ledger: &sled::Tree) -> Result<(), StoreError> {
    if !db.tree_names().iter().any(|n| n.as_ref() == b"tasks") {
        return Ok(());
    }
    let old = db.open_tree("tasks").map_err(io)?;
    let mut moved = 0usize;
    let mut kept = 0usize;
    for entry in old.iter() {
        let (key, bytes) = entry.map_err(io)?;
        let id = String::from_utf8_lossy(&key).into_owned();
        match id_number(&id) {
            Some(n) => {
                ledger.insert(n.to_be_bytes(), bytes).map_err(io)?;
                moved += 1;
            }
            None => {
                tracing::error!(id = %creature_actors::text::printable(&id), "an old task record has no numbered id; left behind");
                kept += 1;
            }
        }
    }
    ledger.flush().map_err(io)?;
    if kept == 0 {
        db.drop_tree("tasks").map_err(io)?;
    }
    if moved > 0 {
        tracing::info!(moved, kept, "moved the task ledger to numbered keys");
    }
    Ok(())
}

impl TaskStore for SledTaskStore {
    fn create(&self, new: Vec<NewTask>) -> Result<Vec<Task>, StoreError> {
        let mut last = self
            .last_id
            .lock()
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let tasks: Vec<Task> = new
            .into_iter()
            .zip(1u64..)
            .map(|(n, i)| Task::new(task_id(*last + i), n.arguments, n.source, n.plan))
            .collect();
        let Some(top) = tasks.last().and_then(|t| id_number(&t.id)) else {
            return Ok(tasks);
        };
        let records = tasks.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        (&self.ledger, &self.meta)
            .transaction(|(ledger, meta)| {
                for (n, bytes) in &records {
                    ledger.insert(&n.to_be_bytes(), bytes.as_slice())?;
                }
                meta.insert(LAST_ID, &top.to_be_bytes())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => io(e),
                TransactionError::Abort(()) => StoreError::Io("ledger write aborted".into()),
            })?;
        // In the tree now, whether or not the flush succeeds: never hand these ids out again.
        *last = top;
        self.db.flush().map_err(io)?;
        Ok(tasks)
    }

    fn put(&self, task: &Task) -> Result<(), StoreError> {
        self.put_lazy(task)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    fn put_all(&self, tasks: &[Task]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for task in tasks {
            let (n, bytes) = encode(task)?;
            batch.insert(&n.to_be_bytes(), bytes);
        }
        self.ledger.apply_batch(batch).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    fn put_lazy(&self, task: &Task) -> Result<(), StoreError> {
        // sled flushes on its own within half a second.
        let (n, bytes) = encode(task)?;
        self.ledger.insert(n.to_be_bytes(), bytes).map_err(io)?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let Some(n) = id_number(id) else {
            return Ok(None);
        };
        match self.ledger.get(n.to_be_bytes()).map_err(io)? {
            None => Ok(None),
            Some(bytes) => {
                let task = decode(&n.to_be_bytes(), &bytes)?;
                // `task-7` and `task-000007` share a number; only the exact id is this task.
                Ok((task.id == id).then_some(task))
            }
        }
    }

    fn list(&self) -> Result<Vec<Task>, StoreError> {
        let mut all = Vec::new();
        for entry in self.ledger.iter() {
            let (key, bytes) = entry.map_err(io)?;
            match decode(&key, &bytes) {
                Ok(task) => all.push(task),
                // One bad record must not hide the rest of the ledger.
                Err(e) => tracing::error!(cause = %e, "skipping corrupt task record"),
            }
        }
        Ok(all)
    }

    fn page(&self, query: &PageQuery) -> Result<Page, StoreError> {
        self.scan(query)
    }

    fn oldest_finished(&self, count: usize) -> Result<Vec<(String, TaskState)>, StoreError> {
        let mut ids = Vec::new();
        if count == 0 {
            return Ok(ids);
        }
        for entry in self.ledger.iter() {
            let (key, bytes) = entry.map_err(io)?;
            let Ok(task) = decode(&key, &bytes) else {
                continue;
            };
            if task.state.is_terminal() {
                ids.push((task.id, task.state));
                if ids.len() == count {
                    break;
                }
            }
        }
        Ok(ids)
    }

    fn delete(&self, ids: &[String]) -> Result<(), StoreError> {
        // Not flushed: a deletion lost in a crash is simply made again on the next start.
        let mut batch = sled::Batch::default();
        for n in ids.iter().filter_map(|id| id_number(id)) {
            batch.remove(&n.to_be_bytes());
        }
        self.ledger.apply_batch(batch).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use creature_actors::ports::{Action, PhysicalTask, TaskSource};

    fn new(object: &str) -> NewTask {
        NewTask {
            intent_at: None,
            arguments: PhysicalTask {
                action: Action::PickUp,
                object: object.into(),
                destination: None,
                utterance: format!("pick up the {object}"),
                confidence: 0.8,
            },
            source: TaskSource::Api,
            plan: None,
        }
    }

    fn task(store: &SledTaskStore, object: &str) -> Task {
        store.create(vec![new(object)]).unwrap().remove(0)
    }

    fn ids(tasks: &[Task]) -> Vec<&str> {
        tasks.iter().map(|t| t.id.as_str()).collect()
    }

    #[test]
    fn tasks_survive_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b) = {
            let store = SledTaskStore::open(dir.path()).unwrap();
            let a = task(&store, "cup");
            let mut b = task(&store, "ball");
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
        // Ids keep going up after a reopen, densely.
        assert_eq!(ids(&all), ["task-1", "task-2"]);
        assert_eq!(task(&store, "pen").id, "task-3");
    }

    #[test]
    fn ids_are_dense_across_reopens_and_ordered_numerically() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..4u64 {
            let store = SledTaskStore::open(dir.path()).unwrap();
            let made = store
                .create((0..3).map(|i| new(&format!("thing {i}"))).collect())
                .unwrap();
            let want: Vec<String> = (1..=3).map(|i| task_id(round * 3 + i)).collect();
            assert_eq!(ids(&made), want);
        }
        let store = SledTaskStore::open(dir.path()).unwrap();
        let all = store.list().unwrap();
        let numbers: Vec<u64> = all.iter().filter_map(|t| id_number(&t.id)).collect();
        assert_eq!(
            numbers,
            (1..=12).collect::<Vec<_>>(),
            "task-10 after task-9"
        );
    }

    #[test]
    fn the_counter_is_kept_even_when_the_newest_tasks_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledTaskStore::open(dir.path()).unwrap();
            for _ in 0..3 {
                task(&store, "cup");
            }
            store.delete(&["task-3".into(), "task-2".into()]).unwrap();
            store.db.flush().unwrap();
        }
        let store = SledTaskStore::open(dir.path()).unwrap();
        assert_eq!(task(&store, "cup").id, "task-4", "never reuse an id");
        assert_eq!(ids(&store.list().unwrap()), ["task-1", "task-4"]);
    }

    #[test]
    fn an_old_ledger_with_generated_ids_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let old_ids = [
            "task-000001",
            "task-2000001",
            "task-12000001",
            "task-999999",
        ];
        {
            let db = sled::open(dir.path()).unwrap();
            let tasks = db.open_tree("tasks").unwrap();
            for id in old_ids {
                let t = Task::new(id.into(), new("cup").arguments, TaskSource::Api, None);
                tasks
                    .insert(id.as_bytes(), serde_json::to_vec(&t).unwrap())
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let store = SledTaskStore::open(dir.path()).unwrap();
        assert_eq!(
            ids(&store.list().unwrap()),
            [
                "task-000001",
                "task-999999",
                "task-2000001",
                "task-12000001"
            ],
            "numeric order, not string order"
        );
        assert!(store.get("task-2000001").unwrap().is_some());
        assert!(store.get("task-1").unwrap().is_none(), "only the exact id");
        assert_eq!(task(&store, "ball").id, "task-12000002");
        drop(store);
        let store = SledTaskStore::open(dir.path()).unwrap();
        assert_eq!(store.list().unwrap().len(), 5);
        assert_eq!(task(&store, "pen").id, "task-12000003");
    }

    #[test]
    fn pages_walk_both_ways_with_a_state_filter() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledTaskStore::open(dir.path()).unwrap();
        for i in 0..12 {
            let mut t = task(&store, "cup");
            if i % 3 == 0 {
                t.transition(TaskState::Cancelled, None).unwrap();
                store.put(&t).unwrap();
            }
        }
        let q = |after, order, states: Vec<TaskState>| PageQuery {
            after,
            limit: 3,
            order,
            states,
        };
        let p = store.page(&q(None, PageOrder::Desc, vec![])).unwrap();
        assert_eq!(ids(&p.tasks), ["task-12", "task-11", "task-10"]);
        assert!(p.more);
        let p = store.page(&q(Some(10), PageOrder::Desc, vec![])).unwrap();
        assert_eq!(ids(&p.tasks), ["task-9", "task-8", "task-7"]);
        let p = store.page(&q(Some(9), PageOrder::Asc, vec![])).unwrap();
        assert_eq!(ids(&p.tasks), ["task-10", "task-11", "task-12"]);
        assert!(!p.more, "nothing after the last");
        let p = store
            .page(&q(None, PageOrder::Asc, vec![TaskState::Cancelled]))
            .unwrap();
        assert_eq!(ids(&p.tasks), ["task-1", "task-4", "task-7"]);
        assert!(p.more);
        let p = store
            .page(&q(Some(7), PageOrder::Asc, vec![TaskState::Cancelled]))
            .unwrap();
        assert_eq!(ids(&p.tasks), ["task-10"]);
        assert!(!p.more);
        assert_eq!(
            store.oldest_finished(2).unwrap(),
            [
                ("task-1".to_string(), TaskState::Cancelled),
                ("task-4".to_string(), TaskState::Cancelled)
            ]
        );
    }

    #[test]
    fn a_corrupt_record_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledTaskStore::open(dir.path()).unwrap();
        let good = task(&store, "cup");
        store
            .ledger
            .insert(99u64.to_be_bytes(), b"{not json".to_vec())
            .unwrap();
        assert_eq!(store.list().unwrap(), [good]);
        let err = store.get("task-99").unwrap_err();
        assert!(err.to_string().contains("task-99"), "{err}");
    }
}
