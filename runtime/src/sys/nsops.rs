//! What trenv changes inside a network or UTS namespace the calling thread has joined: the
//! interfaces (listed, brought up or down) and the host and domain names. Shared by the
//! restore (a template's `lo`, the spec's names) and the sandbox purge.

use std::io;
use std::os::fd::AsRawFd;

/// The names of the thread's network namespace's interfaces.
pub fn interfaces() -> io::Result<Vec<String>> {
    // SAFETY: if_nameindex returns a list terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut p = list;
        while (*p).if_index != 0 {
            out.push(
                std::ffi::CStr::from_ptr((*p).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            p = p.add(1);
        }
        libc::if_freenameindex(list);
        Ok(out)
    }
}

/// Brings interface `name` of the thread's network namespace up or down.
pub fn set_up(name: &str, up: bool) -> io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; the ioctls read and write only this struct.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if up {
            req.ifr_ifru.ifru_flags |= flags;
        } else {
            req.ifr_ifru.ifru_flags &= !flags;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the thread's UTS namespace's host name.
pub fn set_hostname(name: &str) -> io::Result<()> {
    nix::unistd::sethostname(name).map_err(io::Error::from)
}

/// Sets the thread's UTS namespace's domain name.
pub fn set_domainname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
    let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
