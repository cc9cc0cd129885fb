//! PROXY protocol headers: never panics, never reads past the header.
#![no_main]
use keygate::proxy::proxy_protocol::read_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio_rt();
    let mut cursor = std::io::Cursor::new(data.to_vec());
    let _ = rt.block_on(read_header(&mut cursor));
    assert!(cursor.position() as usize <= data.len());
});

fn tokio_rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|_| unreachable!())
    })
}
