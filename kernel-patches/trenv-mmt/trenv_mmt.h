/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * trenv-mmt: the userspace API of trenv's kernel memory templates.
 * The device, the calls and their errors are described in README.md beside this file.
 */
#ifndef _UAPI_TRENV_MMT_H
#define _UAPI_TRENV_MMT_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define TRENV_MMT_DEVICE "/dev/trenv-mmt"
#define TRENV_MMT_API_VERSION 1

/* TRENV_MMT_REGISTER, TRENV_MMT_UNREGISTER: a pool file, by descriptor. */
struct trenv_mmt_register {
	__s32 fd;	/* in: the pool file (regular file on tmpfs or on an fsdax filesystem), open for reading */
	__u32 flags;	/* in: 0 */
	__u64 pages;	/* out: the template's size in pages */
};

/* TRENV_MMT_ATTACH: [offset, offset + length) of a registered pool file at addr of the caller. */
struct trenv_mmt_attach {
	__s32 fd;	/* in: the registered pool file (any descriptor of it) */
	__u32 flags;	/* in: 0 */
	__u64 offset;	/* in: byte offset in the pool file, page-aligned */
	__u64 addr;	/* in: start in the caller's address space, page-aligned */
	__u64 length;	/* in: bytes, page-aligned, > 0 */
};

/* TRENV_MMT_QUERY: what the module knows of a pool file. */
struct trenv_mmt_query {
	__s32 fd;		/* in: a pool file */
	__u32 flags;		/* in: 0 */
	__u32 registered;	/* out: 1 if registered */
	__u32 stale;		/* out: 1 if the file changed since it was registered */
	__u32 dax;		/* out: 1 if the pool is fsdax (persistent memory, CXL) */
	__u32 this_retiring;	/* out: 1 if this file's template was unregistered and is still mapped */
	__u64 pages;		/* out: the template's size in pages */
	__u64 attaches;		/* out: successful attaches so far */
	__u64 templates;	/* out: templates registered in the module (all files) */
	__u64 retiring;		/* out: unregistered templates whose pages are still mapped */
};

#define TRENV_MMT_IOC_MAGIC 0xB7
#define TRENV_MMT_VERSION	_IO(TRENV_MMT_IOC_MAGIC, 0)
#define TRENV_MMT_REGISTER	_IOWR(TRENV_MMT_IOC_MAGIC, 1, struct trenv_mmt_register)
#define TRENV_MMT_UNREGISTER	_IOWR(TRENV_MMT_IOC_MAGIC, 2, struct trenv_mmt_register)
#define TRENV_MMT_ATTACH	_IOW(TRENV_MMT_IOC_MAGIC, 3, struct trenv_mmt_attach)
#define TRENV_MMT_QUERY		_IOWR(TRENV_MMT_IOC_MAGIC, 4, struct trenv_mmt_query)

#endif /* _UAPI_TRENV_MMT_H */
