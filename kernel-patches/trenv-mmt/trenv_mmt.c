// SPDX-License-Identifier: GPL-2.0
/*
 * trenv-mmt: memory templates attached as anonymous memory.
 *
 * A template is a pool file (tmpfs, NUMA-bound tmpfs, or a file on an fsdax
 * filesystem over persistent memory or CXL) registered once: the module takes a
 * reference on each of its pages. ATTACH fills a range of a private anonymous
 * mapping of the calling process with page table entries for the template's pages,
 * read-only, all at once. The mapping stays anonymous: a write copies the page into
 * a private anonymous page (copy-on-write from the pool), MADV_DONTNEED drops the
 * entries and the range then reads zeros, MADV_FREE is accepted. See README.md.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/pagemap.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/shmem_fs.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/workqueue.h>

#include "trenv_mmt.h"

/* Larger pool files are refused (16 GiB): the page array is kept in memory. */
#define MMT_MAX_PAGES (16UL << (30 - PAGE_SHIFT))
/* How often retiring templates are checked for pages still mapped somewhere. */
#define MMT_RETIRE_INTERVAL (HZ)

struct mmt_template {
	struct list_head node;
	struct file *file;		/* the pool file, held while the template lives */
	struct inode *inode;
	struct timespec64 mtime;
	struct timespec64 ctime;
	loff_t size;
	unsigned long nr_pages;
	struct page **pages;		/* one reference each */
	bool dax;
	atomic64_t attaches;
};

/* Registered templates; attaches read it, register and unregister write it. */
static LIST_HEAD(mmt_templates);
static DECLARE_RWSEM(mmt_lock);
static unsigned long mmt_count;

/*
 * Unregistered DAX templates whose pages may still be mapped by some process. A
 * DAX page is the filesystem's block: the pool file (and so its blocks) is kept
 * until no page has a reference besides the filesystem's and ours, else the blocks
 * could be given to another file while a process still maps them.
 */
static LIST_HEAD(mmt_retiring);
static DEFINE_MUTEX(mmt_retire_lock);
static unsigned long mmt_retiring_count;
static void mmt_retire_work(struct work_struct *work);
static DECLARE_DELAYED_WORK(mmt_retire_dwork, mmt_retire_work);

static struct mmt_template *mmt_find(struct inode *inode)
{
	struct mmt_template *t;

	list_for_each_entry(t, &mmt_templates, node)
		if (t->inode == inode)
			return t;
	return NULL;
}

static bool mmt_stale(const struct mmt_template *t)
{
	struct timespec64 mtime = inode_get_mtime(t->inode);
	struct timespec64 ctime = inode_get_ctime(t->inode);

	return i_size_read(t->inode) != t->size ||
	       !timespec64_equal(&mtime, &t->mtime) ||
	       !timespec64_equal(&ctime, &t->ctime);
}

static void mmt_put_pages(struct mmt_template *t, unsigned long n)
{
	unsigned long i;

	for (i = 0; i < n; i++) {
		/*
		 * MADV_FREE in an instance that is a page's only mapper clears the
		 * page's dirty flag. A tmpfs page must stay dirty, or reclaim with
		 * swap could drop its contents: mark it again before letting go.
		 */
		if (!t->dax && !is_zero_page(t->pages[i]))
			set_page_dirty_lock(t->pages[i]);
		put_page(t->pages[i]);
	}
}

static void mmt_free(struct mmt_template *t)
{
	mmt_put_pages(t, t->nr_pages);
	kvfree(t->pages);
	fput(t->file);
	kfree(t);
	module_put(THIS_MODULE);
}

/*
 * True when no page of t is mapped anywhere any more: a DAX page is referenced by nobody
 * but the filesystem and t; a tmpfs page is in no page table. Instances hold a tmpfs
 * template's page cache folios in anonymous memory, where the file's truncation cannot
 * find them: the file must outlive those mappings, or its eviction would take folios out
 * of the page cache while they are still mapped.
 */
static bool mmt_idle(const struct mmt_template *t)
{
	unsigned long i;

	for (i = 0; i < t->nr_pages; i++) {
		struct page *p = t->pages[i];

		if (is_zero_page(p))
			continue;
		if (t->dax ? page_ref_count(p) > 2 : folio_mapped(page_folio(p)))
			return false;
	}
	return true;
}

static void mmt_retire_work(struct work_struct *work)
{
	struct mmt_template *t, *next;
	LIST_HEAD(done);

	mutex_lock(&mmt_retire_lock);
	list_for_each_entry_safe(t, next, &mmt_retiring, node) {
		if (mmt_idle(t)) {
			list_move(&t->node, &done);
			mmt_retiring_count--;
		}
	}
	if (!list_empty(&mmt_retiring))
		schedule_delayed_work(&mmt_retire_dwork, MMT_RETIRE_INTERVAL);
	mutex_unlock(&mmt_retire_lock);
	list_for_each_entry_safe(t, next, &done, node) {
		list_del(&t->node);
		mmt_free(t);
	}
}

static void mmt_release(struct mmt_template *t)
{
	if (mmt_idle(t)) {
		mmt_free(t);
		return;
	}
	mutex_lock(&mmt_retire_lock);
	list_add_tail(&t->node, &mmt_retiring);
	mmt_retiring_count++;
	schedule_delayed_work(&mmt_retire_dwork, MMT_RETIRE_INTERVAL);
	mutex_unlock(&mmt_retire_lock);
}

/* The pool file behind fd, open for reading, or an error pointer. */
static struct file *mmt_pool_file(int fd)
{
	struct file *f = fget(fd);

	if (!f)
		return ERR_PTR(-EBADF);
	if (!(f->f_mode & FMODE_READ)) {
		fput(f);
		return ERR_PTR(-EBADF);
	}
	if (!S_ISREG(file_inode(f)->i_mode)) {
		fput(f);
		return ERR_PTR(-EINVAL);
	}
	return f;
}

/*
 * A tmpfs pool file's pages, from its page cache: a page that is not there is a hole
 * (or was fallocated and never written) and reads as zeros, so the template holds the
 * zero page for it and the pool spends no memory on it; one swapped out is read in.
 */
static int mmt_collect_shmem(struct mmt_template *t)
{
	struct address_space *mapping = t->file->f_mapping;
	struct folio *folio;
	unsigned long i;

	for (i = 0; i < t->nr_pages; i++) {
		folio = filemap_get_folio(mapping, i);
		if (!IS_ERR(folio) && !folio_test_uptodate(folio)) {
			folio_put(folio);
			folio = ERR_PTR(-ENOENT);
		}
		if (IS_ERR(folio) && xa_is_value(xa_load(&mapping->i_pages, i)))
			folio = shmem_read_folio_gfp(mapping, i, mapping_gfp_mask(mapping));
		if (IS_ERR(folio) && PTR_ERR(folio) != -ENOENT) {
			unsigned long j;

			for (j = 0; j < i; j++)
				put_page(t->pages[j]);
			return PTR_ERR(folio);
		}
		if (IS_ERR(folio)) {
			t->pages[i] = ZERO_PAGE(0);
			get_page(t->pages[i]);
		} else {
			t->pages[i] = folio_file_page(folio, i);
		}
		cond_resched();
	}
	return 0;
}

/*
 * A hole of an fsdax file reads through a shared mapping as a zero page: the small one,
 * or, where the hole covers an aligned 2 MiB, a subpage of the huge zero page. Every
 * page of the file that is not the device's is such a zero page; the template holds the
 * small zero page for it, as for a tmpfs hole. (A subpage of the huge zero page would
 * also count its head's references, which are the whole system's: the template would
 * never look idle once unregistered, and its file's blocks would stay allocated.)
 */
static void mmt_dax_holes_to_zero_page(struct mmt_template *t)
{
	unsigned long i;

	for (i = 0; i < t->nr_pages; i++) {
		if (is_zone_device_page(t->pages[i]) || is_zero_page(t->pages[i]))
			continue;
		put_page(t->pages[i]);
		t->pages[i] = ZERO_PAGE(0);
		get_page(t->pages[i]);
	}
}

/*
 * Takes a reference on each page of the pool file. tmpfs: from the page cache. fsdax:
 * the file is mapped shared and read-only in the caller for the time of
 * get_user_pages (holes read as the zero page), then unmapped.
 */
static int mmt_collect_pages(struct mmt_template *t)
{
	unsigned long addr, len = t->nr_pages << PAGE_SHIFT;
	long got;

	if (!t->dax)
		return mmt_collect_shmem(t);
	addr = vm_mmap(t->file, 0, len, PROT_READ, MAP_SHARED, 0);
	if (IS_ERR_VALUE(addr))
		return (int)addr;
	got = get_user_pages_unlocked(addr, t->nr_pages, t->pages, 0);
	vm_munmap(addr, len);
	if (got < 0)
		return (int)got;
	if (got != t->nr_pages) {
		/* Only the collected pages are released (not marked dirty twice). */
		unsigned long i;

		for (i = 0; i < got; i++)
			put_page(t->pages[i]);
		return -EFAULT;
	}
	mmt_dax_holes_to_zero_page(t);
	return 0;
}

static long mmt_register(void __user *argp)
{
	struct trenv_mmt_register arg;
	struct mmt_template *t;
	struct inode *inode;
	struct file *f;
	loff_t size;
	int ret;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if (arg.flags)
		return -EINVAL;
	f = mmt_pool_file(arg.fd);
	if (IS_ERR(f))
		return PTR_ERR(f);
	inode = file_inode(f);
	ret = -EOPNOTSUPP;
	if (!IS_DAX(inode) && !shmem_mapping(inode->i_mapping))
		goto out_file;
	size = i_size_read(inode);
	ret = -EINVAL;
	if (size <= 0 || (PAGE_ALIGN(size) >> PAGE_SHIFT) > MMT_MAX_PAGES)
		goto out_file;
	ret = -ENOMEM;
	t = kzalloc(sizeof(*t), GFP_KERNEL);
	if (!t)
		goto out_file;
	t->file = f;
	t->inode = inode;
	t->size = size;
	t->mtime = inode_get_mtime(inode);
	t->ctime = inode_get_ctime(inode);
	t->nr_pages = PAGE_ALIGN(size) >> PAGE_SHIFT;
	t->dax = IS_DAX(inode);
	atomic64_set(&t->attaches, 0);
	t->pages = kvcalloc(t->nr_pages, sizeof(*t->pages), GFP_KERNEL);
	if (!t->pages)
		goto out_t;

	down_write(&mmt_lock);
	ret = -EEXIST;
	if (mmt_find(inode))
		goto out_unlock;
	ret = mmt_collect_pages(t);
	if (ret)
		goto out_unlock;
	/* Changed while its pages were collected: the caller should try again. */
	ret = -ESTALE;
	if (mmt_stale(t)) {
		mmt_put_pages(t, t->nr_pages);
		goto out_unlock;
	}
	__module_get(THIS_MODULE);
	list_add(&t->node, &mmt_templates);
	mmt_count++;
	up_write(&mmt_lock);

	arg.pages = t->nr_pages;
	if (copy_to_user(argp, &arg, sizeof(arg)))
		return -EFAULT;
	return 0;

out_unlock:
	up_write(&mmt_lock);
	kvfree(t->pages);
out_t:
	kfree(t);
out_file:
	fput(f);
	return ret;
}

static long mmt_unregister(void __user *argp)
{
	struct trenv_mmt_register arg;
	struct mmt_template *t;
	struct file *f;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if (arg.flags)
		return -EINVAL;
	f = mmt_pool_file(arg.fd);
	if (IS_ERR(f))
		return PTR_ERR(f);
	down_write(&mmt_lock);
	t = mmt_find(file_inode(f));
	if (t) {
		list_del(&t->node);
		mmt_count--;
	}
	up_write(&mmt_lock);
	fput(f);
	if (!t)
		return -ENOENT;
	arg.pages = t->nr_pages;
	mmt_release(t);
	if (copy_to_user(argp, &arg, sizeof(arg)))
		return -EFAULT;
	return 0;
}

static long mmt_attach(void __user *argp)
{
	struct trenv_mmt_attach arg;
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	struct mmt_template *t;
	unsigned long first, num;
	struct file *f;
	int ret;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if (arg.flags || !arg.length || !PAGE_ALIGNED(arg.offset) ||
	    !PAGE_ALIGNED(arg.addr) || !PAGE_ALIGNED(arg.length) ||
	    arg.addr + arg.length < arg.addr || arg.offset + arg.length < arg.offset)
		return -EINVAL;
	if (!mm)
		return -EINVAL;
	f = mmt_pool_file(arg.fd);
	if (IS_ERR(f))
		return PTR_ERR(f);

	down_read(&mmt_lock);
	t = mmt_find(file_inode(f));
	ret = -ENOENT;
	if (!t)
		goto out_unlock;
	ret = -ESTALE;
	if (mmt_stale(t))
		goto out_unlock;
	first = arg.offset >> PAGE_SHIFT;
	num = arg.length >> PAGE_SHIFT;
	ret = -ERANGE;
	if (first >= t->nr_pages || num > t->nr_pages - first)
		goto out_unlock;

	ret = mmap_write_lock_killable(mm);
	if (ret)
		goto out_unlock;
	vma = vma_lookup(mm, arg.addr);
	ret = -EFAULT;
	if (!vma || arg.addr + arg.length > vma->vm_end)
		goto out_mm;
	/* A private anonymous mapping, and nothing special about it. */
	ret = -EINVAL;
	if (!vma_is_anonymous(vma) ||
	    (vma->vm_flags & (VM_SHARED | VM_MAYSHARE | VM_PFNMAP | VM_IO | VM_HUGETLB)))
		goto out_mm;
	/* On an error part of the range may be filled: the caller unmaps it. */
	ret = vm_insert_pages(vma, arg.addr, t->pages + first, &num);
	if (!ret)
		atomic64_inc(&t->attaches);
out_mm:
	mmap_write_unlock(mm);
out_unlock:
	up_read(&mmt_lock);
	fput(f);
	return ret;
}

static long mmt_query(void __user *argp)
{
	struct trenv_mmt_query arg;
	struct mmt_template *t;
	struct file *f;

	if (copy_from_user(&arg, argp, sizeof(arg)))
		return -EFAULT;
	if (arg.flags)
		return -EINVAL;
	f = mmt_pool_file(arg.fd);
	if (IS_ERR(f))
		return PTR_ERR(f);
	memset(&arg, 0, sizeof(arg));
	down_read(&mmt_lock);
	t = mmt_find(file_inode(f));
	if (t) {
		arg.registered = 1;
		arg.stale = mmt_stale(t);
		arg.dax = t->dax;
		arg.pages = t->nr_pages;
		arg.attaches = atomic64_read(&t->attaches);
	}
	arg.templates = mmt_count;
	up_read(&mmt_lock);
	mutex_lock(&mmt_retire_lock);
	arg.retiring = mmt_retiring_count;
	list_for_each_entry(t, &mmt_retiring, node)
		if (t->inode == file_inode(f))
			arg.this_retiring = 1;
	mutex_unlock(&mmt_retire_lock);
	fput(f);
	if (copy_to_user(argp, &arg, sizeof(arg)))
		return -EFAULT;
	return 0;
}

static long mmt_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *argp = (void __user *)arg;

	switch (cmd) {
	case TRENV_MMT_VERSION:
		return TRENV_MMT_API_VERSION;
	case TRENV_MMT_REGISTER:
		return mmt_register(argp);
	case TRENV_MMT_UNREGISTER:
		return mmt_unregister(argp);
	case TRENV_MMT_ATTACH:
		return mmt_attach(argp);
	case TRENV_MMT_QUERY:
		return mmt_query(argp);
	default:
		return -ENOTTY;
	}
}

static int mmt_open(struct inode *inode, struct file *file)
{
	/* The device maps pool memory into any process: the host's administrator only. */
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	return 0;
}

static const struct file_operations mmt_fops = {
	.owner = THIS_MODULE,
	.open = mmt_open,
	.unlocked_ioctl = mmt_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice mmt_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "trenv-mmt",
	.fops = &mmt_fops,
	.mode = 0600,
};

static int __init mmt_init(void)
{
	int ret = misc_register(&mmt_dev);

	if (ret)
		return ret;
	pr_info("memory templates ready (API %d)\n", TRENV_MMT_API_VERSION);
	return 0;
}

static void __exit mmt_exit(void)
{
	/*
	 * Every registered or retiring template holds a reference on the module, so
	 * there is none left here.
	 */
	misc_deregister(&mmt_dev);
	cancel_delayed_work_sync(&mmt_retire_dwork);
}

module_init(mmt_init);
module_exit(mmt_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("trenv memory templates: pool memory attached as anonymous copy-on-write memory");
