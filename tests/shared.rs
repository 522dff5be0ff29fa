//! The shared mode's tests, against a real `redis-server` each test starts for itself
//! (127.0.0.1, ephemeral port, no persistence). See `common::redis`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::redis::RedisServer;

#[test]
fn the_test_redis_is_real_private_and_forgets_everything() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    assert_eq!(redis.command(&["PING"]), "+PONG\r\n");
    assert_eq!(redis.command(&["SET", "payauth:probe", "1"]), "+OK\r\n");
    assert_eq!(redis.command(&["GET", "payauth:probe"]), "$1\r\n1\r\n");
    // No persistence: nothing is saved, and a restart starts empty.
    let save = redis.command(&["CONFIG", "GET", "save"]);
    assert!(save.ends_with("$0\r\n\r\n"), "{save:?}");
    let aof = redis.command(&["CONFIG", "GET", "appendonly"]);
    assert!(aof.contains("no"), "{aof:?}");
    let bind = redis.command(&["CONFIG", "GET", "bind"]);
    assert!(bind.contains("127.0.0.1"), "{bind:?}");
    let other = RedisServer::start().expect("a second one");
    assert_ne!(other.port(), redis.port(), "each test has its own");
    assert_eq!(other.command(&["GET", "payauth:probe"]), "$-1\r\n");
}
