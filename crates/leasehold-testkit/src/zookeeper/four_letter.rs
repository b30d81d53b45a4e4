//! ZooKeeper's four-letter admin commands (`srvr`, `ruok`, …) over the client port.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `command` to `addr` and returns everything the server wrote before closing.
pub(crate) async fn send(addr: &str, command: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(command.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

/// The value of the `Mode:` line of a `srvr` answer (`standalone`, `leader`,
/// `follower`), present only once the server serves clients.
pub(crate) fn mode(srvr: &str) -> Option<&str> {
    srvr.lines()
        .find_map(|line| line.strip_prefix("Mode:"))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::mode;

    #[test]
    fn finds_the_mode_line() {
        let srvr = "Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0.0/0\nMode: follower\nNode count: 5\n";
        assert_eq!(mode(srvr), Some("follower"));
        assert_eq!(
            mode("This ZooKeeper instance is not currently serving requests\n"),
            None
        );
    }
}
